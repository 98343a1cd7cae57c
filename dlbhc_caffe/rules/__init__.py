"""Caffe's engine-free rules: what Caffe decides about a net, a solver or a model file, written
once, in plain Python, below the backends.

Both engines (real Caffe through pycaffe, and the torch backend) and the training loop consult
these modules instead of keeping their own copies, and the checks here run before real Caffe
sees a file, so a file Caffe would abort on becomes a one-line `DlbhcError` instead.
Nothing here imports caffe, torch, or any stage above `proto`, `datasets` and `netgen`.
"""
