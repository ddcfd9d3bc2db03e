-- Baseline vs candidate run (checkpoint) of a model: every model-level statistic, its change, and the classes whose median |AS| grew most.
--
-- Question: did a new checkpoint start hiding more class semantics in its null space, and
-- in which classes? (Consumed by the nightly regression alarm via queries.checkpoint_diff.)
--
-- Parameters (bound by DuckDB; NULL = no filter):
--   $images_glob      VARCHAR  auto      DIR/images/**/*.parquet, bound by the runner from --results
--   $model            VARCHAR  NULL      model slug of both sides (needed unless both of the next two are set)
--   $baseline_model   VARCHAR  NULL      model slug of the baseline (default: $model)
--   $candidate_model  VARCHAR  NULL      model slug of the candidate (default: $model)
--   $baseline_run     VARCHAR  required  run id of the baseline
--   $candidate_run    VARCHAR  required  run id of the candidate
--   $top_classes      INTEGER  10        class rows returned (largest growth of median |AS| first)
--
-- Output: one result, two kinds of rows (column kind):
--   kind = 'model': one row per statistic, in a fixed order (column rank = 1, 2, ...):
--       n_images, n_scored, mean_as, median_as, std_as, mean_abs_as, median_abs_as,
--       std_abs_as, mean_is, median_is, std_is, ratio_of_means, median_ratio,
--       mean_logit_drift, max_logit_drift, top1_acc, mean_null_norm_frac, null_dim
--     (same definitions as model_summary.sql); label, class_name, n_* are NULL.
--   kind = 'class': statistic = 'median_abs_as', one row per class present in both runs,
--     the $top_classes with the largest delta (rank 1 = grew most; ties by label).
-- Columns:
--   kind, statistic, rank, label, class_name
--   baseline, candidate        the statistic on each side (DOUBLE)
--   delta                      candidate - baseline
--   rel_delta                  delta / |baseline| (NULL when baseline is 0 or NULL)
--   n_baseline, n_candidate    scored images of the class on each side (class rows)
--   baseline_model, baseline_run, candidate_model, candidate_run
-- Empty when either side has no images (the runner then raises "no rows for model ...").
--
-- @nonempty: model baseline_model candidate_model baseline_run candidate_run
-- @require_any: model baseline_model
-- @require_any: model candidate_model
WITH sides AS (
    SELECT coalesce($baseline_model, $model)::VARCHAR  AS baseline_model,
           $baseline_run::VARCHAR                      AS baseline_run,
           coalesce($candidate_model, $model)::VARCHAR AS candidate_model,
           $candidate_run::VARCHAR                     AS candidate_run
),
-- run_statistics, class_medians: queries/_macros.sql; no row for a side without images
stats AS (
    SELECT 'baseline' AS side, * FROM run_statistics($images_glob, coalesce($baseline_model, $model), $baseline_run)
    UNION ALL
    SELECT 'candidate', * FROM run_statistics($images_glob, coalesce($candidate_model, $model), $candidate_run)
),
long AS (
    SELECT side, unnest([
        {'ord': 1,  'statistic': 'n_images',            'value': n_images::DOUBLE},
        {'ord': 2,  'statistic': 'n_scored',            'value': n_scored::DOUBLE},
        {'ord': 3,  'statistic': 'mean_as',             'value': mean_as},
        {'ord': 4,  'statistic': 'median_as',           'value': median_as},
        {'ord': 5,  'statistic': 'std_as',              'value': std_as},
        {'ord': 6,  'statistic': 'mean_abs_as',         'value': mean_abs_as},
        {'ord': 7,  'statistic': 'median_abs_as',       'value': median_abs_as},
        {'ord': 8,  'statistic': 'std_abs_as',          'value': std_abs_as},
        {'ord': 9,  'statistic': 'mean_is',             'value': mean_is},
        {'ord': 10, 'statistic': 'median_is',           'value': median_is},
        {'ord': 11, 'statistic': 'std_is',              'value': std_is},
        {'ord': 12, 'statistic': 'ratio_of_means',      'value': ratio_of_means},
        {'ord': 13, 'statistic': 'median_ratio',        'value': median_ratio},
        {'ord': 14, 'statistic': 'mean_logit_drift',    'value': mean_logit_drift},
        {'ord': 15, 'statistic': 'max_logit_drift',     'value': max_logit_drift},
        {'ord': 16, 'statistic': 'top1_acc',            'value': top1_acc},
        {'ord': 17, 'statistic': 'mean_null_norm_frac', 'value': mean_null_norm_frac},
        {'ord': 18, 'statistic': 'null_dim',            'value': null_dim::DOUBLE}
    ], recursive := true)
    FROM stats
),
model_rows AS (
    SELECT 'model' AS kind, statistic, ord AS rank,
           NULL::INTEGER AS label, NULL::VARCHAR AS class_name,
           max(value) FILTER (WHERE side = 'baseline') AS baseline,
           max(value) FILTER (WHERE side = 'candidate') AS candidate,
           NULL::BIGINT AS n_baseline, NULL::BIGINT AS n_candidate
    FROM long
    GROUP BY statistic, ord
),
class_rows AS (
    SELECT 'class' AS kind, 'median_abs_as' AS statistic,
           row_number() OVER (ORDER BY c.median_abs_as - b.median_abs_as DESC NULLS LAST, b.label) AS rank,
           b.label, coalesce(c.class_name, b.class_name) AS class_name,
           b.median_abs_as AS baseline, c.median_abs_as AS candidate,
           b.n AS n_baseline, c.n AS n_candidate
    FROM class_medians($images_glob, coalesce($baseline_model, $model), $baseline_run) b
    JOIN class_medians($images_glob, coalesce($candidate_model, $model), $candidate_run) c USING (label)
    QUALIFY rank <= coalesce($top_classes, 10)
),
both_sides AS (
    SELECT count(*) = 2 AS ok FROM stats
)
SELECT kind, statistic, rank, label, class_name, baseline, candidate,
       candidate - baseline AS delta,
       (candidate - baseline) / NULLIF(abs(baseline), 0) AS rel_delta,
       n_baseline, n_candidate,
       sides.baseline_model, sides.baseline_run, sides.candidate_model, sides.candidate_run
FROM (SELECT * FROM model_rows UNION ALL BY NAME SELECT * FROM class_rows) r, sides, both_sides
WHERE both_sides.ok
ORDER BY kind = 'class', rank
