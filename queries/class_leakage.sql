-- Per model, run and class: |AS| and IS statistics and the class's leakage rank in its model (paper Fig. 4).
--
-- Question: which classes does a model hide most in its null space? (rank 1 = largest
-- median |AS| = most leakage.)
--
-- Parameters (bound by DuckDB; NULL = no filter):
--   $images_glob  VARCHAR  auto  DIR/images/**/*.parquet, bound by the runner from --results
--   $model        VARCHAR  NULL  only this model slug
--   $run          VARCHAR  NULL  only this run id
--   $class_name   VARCHAR  NULL  only this class (exact class_name); ranks still count every class
--   $label        INTEGER  NULL  only this class index; ranks still count every class
--   $min_n        INTEGER  1     classes with fewer images are left out (and not ranked)
--   $top          INTEGER  NULL  keep the N most leaking classes per model and run (NULL = all)
--
-- Output columns (one row per model, run and class; angles in degrees):
--   model, run, label, class_name
--   n                                   images of the class
--   n_scored                            images with non-NULL, non-NaN as_deg and is_deg
--   median_abs_as, mean_abs_as, std_abs_as, max_abs_as
--   mean_as                             signed AS
--   median_is, mean_is, std_is
--   top1_acc                            fraction of the class's images predicted correctly
--   leakage_rank                        rank() within (model, run) by median_abs_as descending:
--                                       1 = most leakage; ties share the lowest rank (1, 1, 3);
--                                       NULL when the class has no scored image
--   n_classes                           classes ranked (non-NULL median) in that model and run
-- std_* = sample standard deviation (n - 1). Statistics over scored images only (NULL for a
-- model with null_dim = 0).
-- Order: model, run, leakage_rank, label.
--
-- @nonempty: model run
WITH per_class AS (
    SELECT model, run, label,
           any_value(class_name)                    AS class_name,
           count(*)                                 AS n,
           count(a)                                 AS n_scored,
           median(aa)                               AS median_abs_as,
           avg(aa)                                  AS mean_abs_as,
           stddev_samp(aa)                          AS std_abs_as,
           max(aa)                                  AS max_abs_as,
           avg(a)                                   AS mean_as,
           median(i)                                AS median_is,
           avg(i)                                   AS mean_is,
           stddev_samp(i)                           AS std_is,
           avg((pred = label)::DOUBLE)              AS top1_acc
    FROM scored_images($images_glob, $model, $run)   -- a, aa, i: queries/_macros.sql
    GROUP BY model, run, label
    HAVING count(*) >= coalesce($min_n, 1)
),
ranked AS (
    SELECT *,
           CASE WHEN median_abs_as IS NOT NULL
                THEN rank() OVER (PARTITION BY model, run ORDER BY median_abs_as DESC NULLS LAST)
           END                                                  AS leakage_rank,
           count(median_abs_as) OVER (PARTITION BY model, run) AS n_classes
    FROM per_class
)
SELECT model, run, label, class_name, n, n_scored,
       median_abs_as, mean_abs_as, std_abs_as, max_abs_as, mean_as,
       median_is, mean_is, std_is, top1_acc, leakage_rank, n_classes
FROM ranked
WHERE ($class_name IS NULL OR class_name = $class_name)
  AND ($label IS NULL OR label = $label)
  AND ($top IS NULL OR leakage_rank <= $top)
ORDER BY model, run, leakage_rank NULLS LAST, label
