-- Per model and run: AS, |AS| and IS statistics and the IS/|AS| ratio, best ratio first (paper Fig. 3b).
--
-- Question: how much class semantics does each model hide in its null space (|AS| for the
-- true-class prompt; lower is better) against how much harmless invariance it has (IS;
-- higher is better)?
--
-- Parameters (bound by DuckDB; NULL = no filter):
--   $images_glob  VARCHAR  auto  DIR/images/**/*.parquet, bound by the runner from --results
--   $model        VARCHAR  NULL  only this model slug
--   $run          VARCHAR  NULL  only this run id
--
-- Output columns (one row per model and run; angles in degrees):
--   model, run                              partition keys
--   n_images                                rows in the images table
--   n_scored                                rows whose as_deg and is_deg are both non-NULL and not NaN
--   mean_as, median_as, std_as              signed AS
--   mean_abs_as, median_abs_as, std_abs_as  |AS|
--   mean_is, median_is, std_is              IS
--   ratio_of_means                          mean(IS) / mean(|AS|)
--   median_ratio                            median over images of IS/|AS| (images with |AS| = 0 left out)
--   mean_logit_drift, max_logit_drift       over all images
--   top1_acc                                fraction of images with pred = label
--   mean_null_norm_frac                     mean |P_n f| / |f| over all images
--   null_dim                                m - rank(W) (max over rows; constant per model)
-- All AS/IS statistics use scored images only and are NULL when n_scored = 0 (a model with
-- null_dim = 0 has no null space: its rows are not zeros). std_* = sample standard
-- deviation (n - 1). Median = interpolated 50% quantile.
-- Order: ratio_of_means descending (NULLs last), then model, run.
--
-- @nonempty: model run
WITH img AS (
    SELECT model, run, label, pred, null_dim,
           logit_drift::DOUBLE AS drift,
           null_norm_frac::DOUBLE AS nnf,
           -- NULL unless both AS and IS are valid: the aggregates then skip those rows
           CASE WHEN ok THEN as_deg::DOUBLE END     AS a,
           CASE WHEN ok THEN abs_as_deg::DOUBLE END AS aa,
           CASE WHEN ok THEN is_deg::DOUBLE END     AS i
    FROM (SELECT *, (as_deg IS NOT NULL AND is_deg IS NOT NULL
                     AND NOT isnan(as_deg) AND NOT isnan(is_deg)) AS ok
          FROM read_parquet($images_glob, hive_partitioning = true,
                            hive_types = {'model': VARCHAR, 'run': VARCHAR}))
    WHERE ($model IS NULL OR model = $model)
      AND ($run IS NULL OR run = $run)
)
SELECT model, run,
       count(*)                                     AS n_images,
       count(a)                                     AS n_scored,
       avg(a)                                       AS mean_as,
       median(a)                                    AS median_as,
       stddev_samp(a)                               AS std_as,
       avg(aa)                                      AS mean_abs_as,
       median(aa)                                   AS median_abs_as,
       stddev_samp(aa)                              AS std_abs_as,
       avg(i)                                       AS mean_is,
       median(i)                                    AS median_is,
       stddev_samp(i)                               AS std_is,
       avg(i) / NULLIF(avg(aa), 0)                  AS ratio_of_means,
       median(i / NULLIF(aa, 0))                    AS median_ratio,
       avg(drift)                                   AS mean_logit_drift,
       max(drift)                                   AS max_logit_drift,
       avg((pred = label)::DOUBLE)                  AS top1_acc,
       avg(nnf)                                     AS mean_null_norm_frac,
       max(null_dim)                                AS null_dim
FROM img
GROUP BY model, run
ORDER BY ratio_of_means DESC NULLS LAST, model, run
