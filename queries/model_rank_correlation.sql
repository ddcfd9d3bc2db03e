-- Spearman rank correlation of per-class median |AS| between two models, over the classes both have.
--
-- Question: do two models hide the same classes? (Paper: no significant correlation
-- between ResNet50 and DinoViT.) The p-value is NOT computed here (SQL has no t
-- distribution): the Python API `queries.rank_correlation(...)` adds it with the
-- t-approximation t = rho * sqrt((n - 2) / (1 - rho^2)), n - 2 degrees of freedom,
-- two-sided (as scipy.stats.spearmanr).
--
-- Parameters (bound by DuckDB; NULL = no filter):
--   $images_glob  VARCHAR  auto      DIR/images/**/*.parquet, bound by the runner from --results
--   $model_a      VARCHAR  required  first model slug
--   $model_b      VARCHAR  required  second model slug (may equal model_a with other runs)
--   $run_a        VARCHAR  NULL      run of model_a (NULL = all its runs pooled)
--   $run_b        VARCHAR  NULL      run of model_b (NULL = all its runs pooled)
--   $min_n        INTEGER  1         classes with fewer scored images in either model are left out
--
-- Output columns (one row; empty when the models share no scored class):
--   model_a, run_a, model_b, run_b   as bound (run NULL = pooled)
--   n_classes                        classes with a median |AS| in both models
--   spearman_rho                     Pearson correlation of the average ranks (ties share the
--                                    mean of their ranks), i.e. Spearman's rho with tie handling
--   pearson_r                        Pearson correlation of the medians themselves
--   mean_median_abs_as_a, mean_median_abs_as_b   mean over the shared classes
-- Ranks are taken over the shared classes only. NULL rho when n_classes < 2 or a side is constant.
--
-- @nonempty: model_a model_b run_a run_b
WITH shared AS (    -- class_medians: queries/_macros.sql
    SELECT a.label, a.median_abs_as AS med_a, b.median_abs_as AS med_b
    FROM class_medians($images_glob, $model_a, $run_a) a
    JOIN class_medians($images_glob, $model_b, $run_b) b USING (label)
    WHERE a.n >= coalesce($min_n, 1) AND b.n >= coalesce($min_n, 1)
),
ranked AS (
    SELECT med_a, med_b,
           rank() OVER (ORDER BY med_a) + (count(*) OVER (PARTITION BY med_a) - 1) / 2.0 AS rank_a,
           rank() OVER (ORDER BY med_b) + (count(*) OVER (PARTITION BY med_b) - 1) / 2.0 AS rank_b
    FROM shared
)
SELECT $model_a::VARCHAR AS model_a, $run_a::VARCHAR AS run_a,
       $model_b::VARCHAR AS model_b, $run_b::VARCHAR AS run_b,
       count(*)               AS n_classes,
       corr(rank_a, rank_b)   AS spearman_rho,
       corr(med_a, med_b)     AS pearson_r,
       avg(med_a)             AS mean_median_abs_as_a,
       avg(med_b)             AS mean_median_abs_as_b
FROM ranked
HAVING count(*) > 0
