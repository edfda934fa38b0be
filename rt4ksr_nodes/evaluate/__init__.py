"""Fidelity evaluation: `python -m rt4ksr_nodes.evaluate` (PSNR/SSIM on RGB and Y).

cli.py is the command; metrics.py the measures (MATLAB's conventions, as the paper's tables use
them); imresize.py MATLAB's bicubic resize, for the low-resolution inputs. Imports model,
engine, files and cli.args; only scripts import it.
"""
