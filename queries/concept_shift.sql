-- Per model, run, class and concept: mean angle to the concept before/after null removal, and mean AS (paper Fig. 5).
--
-- Question: which concepts does the null space hide or reinforce for a class? AS = angle
-- before - angle after removing the null-space component; AS > 0: the null-free
-- equivalent is closer to the concept (the null space pushed the image away from it).
-- With $key: the concepts that moved most for one image.
--
-- Parameters (bound by DuckDB; NULL = no filter):
--   $images_glob    VARCHAR  auto  DIR/images/**/*.parquet (class names), bound by the runner
--   $concept_angles_glob  VARCHAR  auto  DIR/concept_angles/**/*.parquet (lists), bound by the runner
--   $concept_vocab_glob   VARCHAR  auto  DIR/concept_vocab/**/*.parquet, bound by the runner
--   $concepts_glob        VARCHAR  auto  DIR/concepts/**/*.parquet (long, runs before 2026-12-03)
--   $model          VARCHAR  NULL  only this model slug
--   $run            VARCHAR  NULL  only this run id
--   $class_name     VARCHAR  NULL  only this true class (exact class_name)
--   $label          INTEGER  NULL  only this true class index
--   $concept        VARCHAR  NULL  only this concept (exact text)
--   $key            VARCHAR  NULL  only this image (single-image drill-down)
--   $top            INTEGER  NULL  keep the N concepts with the largest |mean AS| per class (NULL = all)
--
-- Output columns (one row per model, run, class and concept; angles in degrees):
--   model, run, label, class_name, concept
--   n                                     concept rows (images)
--   mean_angle_before, mean_angle_after   mean angle(T(f), t_k) and angle(T(f_eq), t_k)
--   mean_as, median_as, std_as            AS toward the concept (std: sample, n - 1)
--   frac_closer                           fraction of images with AS > 0
--   rank_in_class                         rank by |mean_as| descending within (model, run, class)
-- class_name comes from the images table (NULL if the image rows are missing).
-- Order: model, run, label, rank_in_class, concept.
--
-- @nonempty: model run class_name label concept key
WITH classes AS (
    SELECT model, run, label, any_value(class_name) AS class_name
    FROM result_rows($images_glob, $model, $run)    -- queries/_macros.sql
    WHERE $label IS NULL OR label = $label
    GROUP BY model, run, label
),
con AS (
    SELECT model, run, label, concept,
           angle_before_deg::DOUBLE AS b,
           angle_after_deg::DOUBLE AS af,
           CASE WHEN NOT isnan(as_deg) THEN as_deg::DOUBLE END AS a
    FROM concept_rows($images_glob, $concept_angles_glob, $concept_vocab_glob, $concepts_glob, $model, $run,
                      only_label := $label, only_key := $key, only_concept := $concept)
    WHERE ($label IS NULL OR label = $label)
      AND ($concept IS NULL OR concept = $concept)
      AND ($key IS NULL OR key = $key)
),
agg AS (
    SELECT c.model, c.run, c.label, cl.class_name, c.concept,
           count(*)                     AS n,
           avg(c.b)                     AS mean_angle_before,
           avg(c.af)                    AS mean_angle_after,
           avg(c.a)                     AS mean_as,
           median(c.a)                  AS median_as,
           stddev_samp(c.a)             AS std_as,
           avg((c.a > 0)::DOUBLE)       AS frac_closer
    FROM con c
    LEFT JOIN classes cl ON cl.model = c.model AND cl.run = c.run AND cl.label = c.label
    WHERE ($class_name IS NULL OR cl.class_name = $class_name)
    GROUP BY c.model, c.run, c.label, cl.class_name, c.concept
),
ranked AS (
    SELECT *, rank() OVER (PARTITION BY model, run, label ORDER BY abs(mean_as) DESC NULLS LAST) AS rank_in_class
    FROM agg
)
SELECT model, run, label, class_name, concept, n, mean_angle_before, mean_angle_after,
       mean_as, median_as, std_as, frac_closer, rank_in_class
FROM ranked
WHERE $top IS NULL OR rank_in_class <= $top
ORDER BY model, run, label, rank_in_class, concept
