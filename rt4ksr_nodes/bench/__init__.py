"""The paper's speed benchmark, done right: `python -m rt4ksr_nodes.bench [subcommand]`.

cli.py holds the command and its subcommands; speed.py (the forms and precisions against fp32),
runner.py (the headless folder batch, stage by stage), encoders.py (image encoders compared),
ray_scaling.py (1 and 2 Ray worker nodes) and video.py (the streamed video pipeline) measure one
part each. May import every other part of the package; nothing imports it.
"""
