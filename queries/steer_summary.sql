-- Per model, run and steering target: how far null-space steering moves images toward the target (paper Table 1).
--
-- Question: at a fixed image change (IS ~ 40 deg), how much can a foreign concept be hidden
-- in the null space? |AS| toward the target: lower = harder to hide a concept.
--
-- Parameters (bound by DuckDB; NULL = no filter):
--   $steer_glob      VARCHAR  auto  DIR/steer/**/*.parquet, bound by the runner from --results
--   $model           VARCHAR  NULL  only this model slug
--   $run             VARCHAR  NULL  only this run id
--   $target          VARCHAR  NULL  only this target prompt (exact text)
--   $label           INTEGER  NULL  only images of this true class index
--   $reachable_only  BOOLEAN  true  AS/IS/eps statistics over reachable rows only (false: all rows)
--
-- Output columns (one row per model, run and target; angles in degrees):
--   model, run, target
--   n, n_reachable                 rows, rows whose calibration reached the target IS
--   mean_abs_as, std_abs_as, sem_abs_as   |AS| toward the target (std: sample, n - 1; sem = std/sqrt(n))
--   mean_as                        signed AS
--   mean_is, std_is                IS
--   mean_eps                       mean step size
--   max_abs_logit_drift            max |logit drift| over all rows (should be ~0)
-- Order: target, mean_abs_as, model, run.
--
-- @nonempty: model run target label
WITH s AS (
    SELECT model, run, target, reachable,
           coalesce(reachable, false) OR NOT coalesce($reachable_only, true) AS inc,
           abs_as_deg::DOUBLE AS aa, as_deg::DOUBLE AS a, is_deg::DOUBLE AS i, eps::DOUBLE AS e,
           logit_drift::DOUBLE AS drift
    FROM result_rows($steer_glob, $model, $run)     -- queries/_macros.sql
    WHERE ($target IS NULL OR target = $target)
      AND ($label IS NULL OR label = $label)
)
SELECT model, run, target,
       count(*)                                  AS n,
       count(*) FILTER (WHERE reachable)         AS n_reachable,
       avg(aa) FILTER (WHERE inc)                AS mean_abs_as,
       stddev_samp(aa) FILTER (WHERE inc)        AS std_abs_as,
       stddev_samp(aa) FILTER (WHERE inc) / sqrt(count(aa) FILTER (WHERE inc)) AS sem_abs_as,
       avg(a) FILTER (WHERE inc)                 AS mean_as,
       avg(i) FILTER (WHERE inc)                 AS mean_is,
       stddev_samp(i) FILTER (WHERE inc)         AS std_is,
       avg(e) FILTER (WHERE inc)                 AS mean_eps,
       max(abs(drift))                           AS max_abs_logit_drift
FROM s
GROUP BY model, run, target
ORDER BY target, mean_abs_as NULLS LAST, model, run
