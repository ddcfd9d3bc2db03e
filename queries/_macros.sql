-- Shared SQL of the built-in queries: DuckDB table macros that the runner defines on every
-- connection before it runs a query, so user .sql files may call them too. Not a query
-- itself (the leading underscore keeps it out of `sing query --list`).
--
-- Each macro takes `files`, a table's glob (a $<table>_glob parameter), and optionally one model
-- slug and one run id: NULL = every model / every run.

-- The rows of one results table. hive_types keeps model and run VARCHAR: a run id such as
-- 20240101 would otherwise come back as a number.
CREATE MACRO result_rows(files, only_model := NULL, only_run := NULL) AS TABLE
SELECT *
FROM read_parquet(files, hive_partitioning = true, hive_types = {'model': VARCHAR, 'run': VARCHAR})
WHERE (only_model IS NULL OR model = only_model)
  AND (only_run IS NULL OR run = only_run);

-- Images with `ok`: both AS and IS are valid (non-NULL and not NaN; a model with
-- null_dim = 0 has neither). a, aa, i are as_deg, abs_as_deg, is_deg as DOUBLE where ok and
-- NULL elsewhere, so every aggregate over them skips the unscored images.
CREATE MACRO scored_images(files, only_model := NULL, only_run := NULL) AS TABLE
SELECT *,
       CASE WHEN ok THEN as_deg::DOUBLE END     AS a,
       CASE WHEN ok THEN abs_as_deg::DOUBLE END AS aa,
       CASE WHEN ok THEN is_deg::DOUBLE END     AS i
FROM (SELECT *, (as_deg IS NOT NULL AND is_deg IS NOT NULL
                 AND NOT isnan(as_deg) AND NOT isnan(is_deg)) AS ok
      FROM result_rows(files, only_model, only_run));

-- The model-level statistics, one row per model and run: the columns of model_summary.sql
-- (documented there), which checkpoint_diff.sql compares between two runs.
CREATE MACRO run_statistics(files, only_model := NULL, only_run := NULL) AS TABLE
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
       avg(logit_drift::DOUBLE)                     AS mean_logit_drift,
       max(logit_drift::DOUBLE)                     AS max_logit_drift,
       avg((pred = label)::DOUBLE)                  AS top1_acc,
       avg(null_norm_frac::DOUBLE)                  AS mean_null_norm_frac,
       max(null_dim)                                AS null_dim
FROM scored_images(files, only_model, only_run)
GROUP BY model, run;

-- Per class (label) of the scored images: n scored images and their median |AS|
-- (only_run NULL pools the model's runs).
CREATE MACRO class_medians(files, only_model := NULL, only_run := NULL) AS TABLE
SELECT label, any_value(class_name) AS class_name, count(*) AS n, median(aa) AS median_abs_as
FROM scored_images(files, only_model, only_run)
WHERE ok
GROUP BY label;
