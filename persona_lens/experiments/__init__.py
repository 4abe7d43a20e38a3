"""Experiments of the method, built on the core: extract, steering_sweep, monitor, shift, screen, finetune, export;
``evaluate`` is the loop they share to generate replies, judge them and average the scores.

Each returns plain dataclasses and writes its own append-only records; figures and reports for a person are drawn
by :mod:`persona_lens.viz` and written by :mod:`persona_lens.cli`.
"""
