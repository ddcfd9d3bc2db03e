"""The benchmarks: one room for every `sing bench*` command (they import the jobs, never the
other way round).

    pipeline.py   `sing bench`: the audit against the bare forward, fixed cost, memory
                  (+ data.py inputs, forward.py bare forwards, fixed.py fixed-cost lines,
                  floor.py the same stream with no model work)
    precision.py  `sing bench-precision`: each precision against a float64 forward
"""
