"""Build and install dlbhc-caffe.

The Hamming ranking (dlbhc_caffe/hamming/*.pyx) is a Cython extension built with OpenMP, so many
queries rank at once across cores; everything else is pure Python.
"""
import glob
import os

from setuptools import Extension, find_packages, setup


def cython_extensions():
    from Cython.Build import cythonize

    sources = sorted(glob.glob(os.path.join("dlbhc_caffe", "**", "*.pyx"), recursive=True))
    extensions = [
        Extension(
            os.path.splitext(src)[0].replace(os.sep, "."),
            [src],
            include_dirs=[os.path.dirname(src)],  # the kernels' C header beside the .pyx
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
        for src in sources
    ]
    return cythonize(extensions, language_level=3, compiler_directives={"boundscheck": False,
                                                                         "wraparound": False})


setup(
    name="dlbhc-caffe",
    version="0.1.0",
    description="Deep Learning of Binary Hash Codes (CVPRW 2015) on Caffe's own files, in Python",
    packages=find_packages(include=["dlbhc_caffe", "dlbhc_caffe.*"]),
    package_data={"dlbhc_caffe": ["proto/*.proto", "data/*.txt", "data/**/*.txt",
                                   "hamming/*.h"]},
    ext_modules=cython_extensions(),
    python_requires=">=3.9",
    install_requires=[
        "numpy", "scipy", "h5py", "protobuf>=4.21", "plyvel", "lmdb", "Pillow", "scikit-image",
        "scikit-learn", "matplotlib", "tqdm",
    ],
    extras_require={"torch": ["torch"], "faiss": ["faiss-cpu"], "test": ["pytest"]},
)
