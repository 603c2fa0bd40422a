from setuptools import find_packages, setup

setup(
    name="sb3_async",
    version="0.1.0",
    description="Asynchronous actor-critic algorithms (A3C and friends) for Stable-Baselines3",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["sb3_async", "sb3_async.*"]),
    python_requires=">=3.10",
    install_requires=[
        "stable-baselines3>=2.3",
        "sb3-contrib>=2.3",
        "gymnasium>=0.29",
        # The range stays open; the Makefile pins the fast CPU build for this project's machines.
        "torch>=2.3",
        "cloudpickle",
        "numpy",
        # SB3's progress bar
        "tqdm",
        "rich",
    ],
    extras_require={
        "zoo": ["rl-zoo3>=2.3", "optuna", "pandas"],
        "tests": ["pytest", "pytest-timeout"],
        "docs": [],
    },
)
