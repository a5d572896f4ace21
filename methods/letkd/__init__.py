"""letKD (Gorgun, Gurbuz & Alatan, "Knowledge Distillation Layer that Lets the Student Decide", BMVC 2023).

``method.py``: the KD layer, its loss on tensors, how the layers are wired into a student, and the
method class that the two registered variants share (``methods/letkd1.py``, ``methods/letkd2.py``).
``supervision.py``: the teacher-derived targets built offline by the ``build_supervision`` stage
(k-means centroids of the teacher's last-stage locations, LDA sub-classes of an intermediate stage).
"""
