from setuptools import find_packages, setup

setup(
    name="kvattn_fairseq",
    version="0.1.0",
    description="Efficient key-value attention (MemSizer and friends) as a fairseq plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.8",
    packages=find_packages(include=["kvattn_fairseq", "kvattn_fairseq.*"]),
    install_requires=[
        "torch>=1.13",
        "numpy",
        # Upstream fairseq 0.12.2 does not import on Python >= 3.11; fairseq-fixed is upstream main + the fix.
        "fairseq-fixed==0.12.3.1; python_version >= '3.11'",
        "fairseq>=0.12.2; python_version < '3.11'",
        "hydra-core>=1.0.7",
        "sacrebleu>=2.0",
        "rouge-score>=0.1.2",  # its wheels stop at 0.0.4 (2020); a binary-only resolution would fall back to it
        "sacremoses",  # Moses tokenization for the compound-split tokenized BLEU of the WMT tables
        "sentencepiece",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis", "matplotlib"],
        "bench": ["matplotlib"],
        # the GPU kernels: flash-linear-attention's Triton kernels (triton itself comes with a CUDA build of torch);
        # imported only when a CUDA device is used
        "gpu": ["fla-core==0.6.0", "einops"],
    },
    entry_points={"console_scripts": ["kvattn-fairseq=kvattn_fairseq.commands:main"]},
)
