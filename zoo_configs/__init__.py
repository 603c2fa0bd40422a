"""rl-zoo3 config files for sb3_async's algorithms (installed as ``sb3_async.zoo_configs``)."""
