"""The pure decision machinery (the monitor's and the deploy watch's), apart from any I/O.

The runbook's operator watches four terminals and judges the decision matrix
by eye. The monitor replaces that judgement with code that can be tested
without a running stack, so it is split into pure layers:

- ``promtext``: the Prometheus text exposition format into typed samples;
- ``series``: a time-windowed store of scraped samples and the PromQL-like
  functions (``rate``, ratios, ``histogram_quantile``, latest gauge) that turn
  them into signal values;
- ``rules``: the decision matrix as data (``Rule``, ``DEFAULT_RULES``) and the
  pure ``evaluate`` function;
- ``baseline``: when a healthy release's baseline is captured (the median of
  each signal a relative rule reads) and which one is in use;
- ``replay``: recorded signals replayed through the policy (``backout policy
  test FILE``).

Adapters that scrape, probe and act live elsewhere (``backout.signals``); no
module here reads a clock, a socket or a file except ``replay.replay_file``.
"""
