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

-- The shards whose marker file (`images`, `steer`) exists: done, whole (pipelines/io/layout.py
-- writes a shard's other files before its marker). From the file names, so a shard with no
-- scored image counts too.
CREATE MACRO committed_shards(markers) AS TABLE
SELECT regexp_extract(file, 'model=([^/]+)/', 1) AS model, regexp_extract(file, 'run=([^/]+)/', 1) AS run,
       regexp_extract(file, '([^/]+)\.parquet$', 1) AS shard
FROM glob(markers);

-- The errors of done shards only (a shard being written, or whose writer died, is not read).
CREATE MACRO error_rows(images, errors, only_model := NULL, only_run := NULL) AS TABLE
SELECT e.* FROM result_rows(errors, only_model, only_run) e
SEMI JOIN committed_shards(images) d ON d.model = e.model AND d.run = e.run AND d.shard = e.shard;

-- One row per image, model, run and concept, whichever layout wrote the angles: the lists of
-- `concept_angles` (one row per image, angles in the order of the run's `concept_vocab`;
-- written since 2026-12-03) and the long `concepts` table of older runs. A layout that a
-- results directory does not hold is bound to an empty file (queries.runner). A shard found in
-- both (a run resumed across the change) counts once, from the lists; a shard whose images
-- file is not written yet is not read at all. The only_* filters
-- (NULL = all) are applied before the lists are spread into rows: a query that filters by
-- image, class or concept reads one row per image, not one per image and concept.
CREATE MACRO concept_rows(images, angles, vocab, long_files, only_model := NULL, only_run := NULL,
                          only_label := NULL, only_key := NULL, only_concept := NULL, only_ids := NULL) AS TABLE
WITH done AS (SELECT * FROM committed_shards(images)),
a AS (
    SELECT model, run, key, shard, label, angle_before_deg, angle_after_deg
    FROM result_rows(angles, only_model, only_run)
    SEMI JOIN done USING (model, run, shard)
    WHERE (only_label IS NULL OR label = only_label) AND (only_key IS NULL OR key = only_key)
      AND (only_ids IS NULL OR list_contains(only_ids, shard || '#' || key))
),
v AS (
    SELECT model, run, concept_index, concept
    FROM result_rows(vocab, only_model, only_run)
    WHERE only_concept IS NULL OR concept = only_concept
),
spread AS (
    SELECT model, run, key, shard, label,
           unnest(angle_before_deg) AS angle_before_deg, unnest(angle_after_deg) AS angle_after_deg,
           unnest(range(len(angle_before_deg)))::INTEGER AS concept_index
    FROM a
),
listed AS (
    SELECT s.model, s.run, s.key, s.shard, s.label, v.concept, s.angle_before_deg, s.angle_after_deg
    FROM spread s JOIN v ON v.model = s.model AND v.run = s.run AND v.concept_index = s.concept_index
)
SELECT model, run, key, shard, label, concept, angle_before_deg, angle_after_deg,
       angle_before_deg - angle_after_deg AS as_deg
FROM listed
UNION ALL
SELECT c.model, c.run, c.key, c.shard, c.label, c.concept, c.angle_before_deg, c.angle_after_deg, c.as_deg
FROM result_rows(long_files, only_model, only_run) c
SEMI JOIN done USING (model, run, shard)
ANTI JOIN committed_shards(angles) d  -- the files' names: no scan of the lists
     ON d.model = c.model AND d.run = c.run AND d.shard = c.shard
WHERE (only_label IS NULL OR c.label = only_label) AND (only_key IS NULL OR c.key = only_key)
  AND (only_concept IS NULL OR c.concept = only_concept)
  AND (only_ids IS NULL OR list_contains(only_ids, c.shard || '#' || c.key));
