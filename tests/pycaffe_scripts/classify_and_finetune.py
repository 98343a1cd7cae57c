#!/usr/bin/env python
# A pycaffe script in the style of Caffe's classification and fine-tuning notebooks, written
# against pycaffe's API only: it must run unchanged under real Caffe and under
# `python -m dlbhc_caffe.pycaffe`.
#
# usage: classify_and_finetune.py DEPLOY WEIGHTS MEAN IMAGE SOLVER OUT_PREFIX
import sys

import numpy as np
import caffe

deploy, weights, mean_file, image_file, solver_file, out_prefix = sys.argv[1:7]

caffe.set_mode_cpu()
net = caffe.Net(deploy, weights, caffe.TEST)

# the mean image -> per-channel mean, as in the classification example
blob = caffe.proto.caffe_pb2.BlobProto()
with open(mean_file, 'rb') as f:
    blob.ParseFromString(f.read())
mu = caffe.io.blobproto_to_array(blob)[0].mean(1).mean(1)
print('mean-subtracted values:', list(zip('BGR', mu)))

transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
transformer.set_transpose('data', (2, 0, 1))     # H x W x C -> C x H x W
transformer.set_mean('data', mu)
transformer.set_raw_scale('data', 255)           # [0, 1] -> [0, 255]
transformer.set_channel_swap('data', (2, 1, 0))  # RGB -> BGR

h, w = net.blobs['data'].data.shape[2:]
net.blobs['data'].reshape(1, 3, h, w)
image = caffe.io.load_image(image_file)
net.blobs['data'].data[...] = transformer.preprocess('data', image)
output = net.forward()
prob = output['prob'][0]
fc7 = net.blobs['fc7'].data[0].copy()
print('predicted class:', prob.argmax(), 'fc7 norm:', np.linalg.norm(fc7))

# fine-tune from the same weights
solver = caffe.SGDSolver(solver_file)
solver.net.copy_from(weights)
losses = []
for it in range(4):
    solver.step(1)
    losses.append(float(solver.net.blobs['loss'].data))
    print('iter', solver.iter, 'loss', losses[-1])
solver.net.save(out_prefix + '.caffemodel')
np.savez(out_prefix + '.npz', fc7=fc7, prob=prob, losses=np.array(losses))
