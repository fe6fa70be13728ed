"""The test suite. Shared helpers live in these modules; use them rather than writing another copy:

- ``tests/models.py``: tiny deterministic models and data (``RecordingModel``, ``MixinModel``, ``loader``), a quiet
  CPU ``trainer``, ``fit_logged`` (fit with callbacks, return the TensorBoard scalars), ``CrashAt`` for resume tests.
- ``tests/tb.py``: TensorBoard event files read back with TensorBoard's own reader (``scalars``, ``histogram_steps``,
  the custom-scalars ``layout``, ``float32`` for exact comparisons).
- ``tests/references.py``: reference formulas written out independently of the code under test (``warmup_cosine``).
- ``tests/previews.py``: counting how often a preview evaluates the schedules.
- ``tests/cli/apps.py``: the apps run in a subprocess (``run_app``, ``run_app_expecting_failure``) and ``TINY``, the
  ``debug=tiny`` config group that makes a run take about a second.
- ``tests/conftest.py``: the ``slow`` / ``subprocess`` / ``ddp`` markers, assigned from what a test does;
  ``make test-fast`` leaves them out.
"""
