"""`specli bench`: what a sweep runs (plan), the costs it times (calibration), the sweep
itself (sweep), its rows and summary (summary), the machine's load (machine), and the
built-in prompt suites (suites)."""
