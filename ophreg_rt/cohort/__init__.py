"""Cohorts: a manifest of images, the method's pairing rules, and batch registration.

``manifest`` reads and validates the image list, ``pairing`` applies the method's rules
(one patient, one eye, one field centre; three tasks), ``batch`` registers the pairs on this
machine with worker processes, ``ray_engine`` does the same on a Ray cluster (optional extra),
and ``cli`` adds the ``pairs`` and ``batch`` commands.
"""
