from setuptools import find_packages, setup

setup(
    name="sb3_async",
    version="0.1.0",
    description="Asynchronous actor-critic algorithms (A3C and friends) for Stable-Baselines3",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    # zoo_configs/ (rl-zoo3 config files) ships inside the package as sb3_async.zoo_configs.
    packages=[*find_packages(include=["sb3_async", "sb3_async.*"]), "sb3_async.zoo_configs"],
    package_dir={"sb3_async.zoo_configs": "zoo_configs"},
    package_data={"sb3_async.zoo_configs": ["*.yml"]},
    entry_points={"console_scripts": ["sb3-async-zoo=sb3_async.zoo.cli:main"]},
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
        # rl-zoo3 integration (sb3_async.zoo) and tuning
        "rl-zoo3[plots]>=2.3",
        "optuna>=3.0",
        "pandas",
        "requests",  # rl-zoo3's enjoy imports it without declaring it
    ],
    extras_require={
        # The envs of the zoo configs beyond classic control: LunarLander (Box2D), Atari and MinAtar (GPL-3.0).
        "envs": ["gymnasium[box2d]", "ale-py", "opencv-python-headless", "minatar"],
        # backend="ray": workers as Ray actors, on one machine or a cluster (docs/distributed.md).
        "ray": ["ray>=2.9"],
        "tests": [
            "pytest",
            "pytest-timeout",
            "ruff>=0.5.6",
            "mypy>=1.8",
            "gymnasium[box2d]",
            "ale-py",
            "opencv-python-headless",
            "minatar",
            "ray>=2.9",
        ],
        "docs": [],
    },
)
