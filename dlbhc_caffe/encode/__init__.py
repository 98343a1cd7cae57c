"""Encode: a trained net turns images or database records into hash codes and fc7 features.

- transform.py  how pixels become the net's input (prepare_batch.m for image files, Caffe's
                TEST-phase DataTransformer for records)
- encoder.py    the Encoder (a deploy net over batches) and encode_dataset (run_cifar10.m's
                protocol: the train split is the database, the test split the queries)
- features.py   Features (latent, codes, fc7, paths, labels) and their .npz / .mat files
- model.py      Model (a run folder, or deploy + weights + mean) and the one set of
                command-line options every tool uses to name it
"""
from .encoder import BATCH_SIZE, FC7_BLOB, LATENT_BLOB, Encoder, deploy_blobs, encode_dataset
from .features import FEATURE_SUFFIXES, THRESHOLD, Features, concat_features
from .model import Model, add_model_options, mean_values, model_given, resolve_model
from .transform import (EncodeError, Transform, centre_offset, matlab_centre_offset, read_image,
                        resize_bilinear)

__all__ = [
    "BATCH_SIZE", "FC7_BLOB", "LATENT_BLOB", "Encoder", "deploy_blobs", "encode_dataset",
    "FEATURE_SUFFIXES", "THRESHOLD", "Features", "concat_features", "Model", "add_model_options",
    "mean_values", "model_given", "resolve_model", "EncodeError", "Transform", "centre_offset",
    "matlab_centre_offset", "read_image", "resize_bilinear",
]
