-- Top-k images by |AS| (or by IS), with keys and shards: drill down to single images.
--
-- Question: which images hide the most class semantics in the null space (or have the
-- largest harmless invariance)? With $key: every number for one image, per model and run.
--
-- Parameters (bound by DuckDB; NULL = no filter):
--   $images_glob  VARCHAR  auto      DIR/images/**/*.parquet, bound by the runner from --results
--   $model        VARCHAR  NULL      only this model slug
--   $run          VARCHAR  NULL      only this run id
--   $class_name   VARCHAR  NULL      only images of this true class (exact class_name)
--   $label        INTEGER  NULL      only images of this true class index
--   $key          VARCHAR  NULL      only this webdataset __key__ (single-image drill-down)
--   $shard        VARCHAR  NULL      only this shard (file stem)
--   $order_by     VARCHAR  'abs_as'  sort key, descending; one of 'abs_as', 'is'
--   $k            INTEGER  20        number of images returned (over all selected models and runs)
--
-- Output columns (one row per image, model and run; angles in degrees):
--   rank                        1 = largest sort key
--   model, run, key, shard, label, class_name, pred, pred_name
--   correct                     pred = label
--   as_deg, abs_as_deg, is_deg, pred_as_deg, logit_drift, null_norm_frac, null_dim
--   is_over_abs_as              IS/|AS| of this image (NULL when |AS| = 0 or unscored)
-- Images with a NULL sort key (null_dim = 0) come last. Ties: model, run, shard, key.
--
-- @nonempty: model run key
WITH top AS (
    SELECT model, run, key, shard, label, class_name, pred, pred_name,
           as_deg, abs_as_deg, is_deg, pred_as_deg, logit_drift, null_norm_frac, null_dim,
           CASE WHEN $order_by = 'is' THEN is_deg ELSE abs_as_deg END AS sort_key
    FROM result_rows($images_glob, $model, $run)    -- queries/_macros.sql
    WHERE ($class_name IS NULL OR class_name = $class_name)
      AND ($label IS NULL OR label = $label)
      AND ($key IS NULL OR key = $key)
      AND ($shard IS NULL OR shard = $shard)
    ORDER BY sort_key DESC NULLS LAST, model, run, shard, key
    LIMIT $k
)
SELECT row_number() OVER (ORDER BY sort_key DESC NULLS LAST, model, run, shard, key) AS rank,
       model, run, key, shard, label, class_name, pred, pred_name,
       pred = label AS correct,
       as_deg, abs_as_deg, is_deg, pred_as_deg, logit_drift, null_norm_frac, null_dim,
       is_deg::DOUBLE / NULLIF(abs_as_deg::DOUBLE, 0) AS is_over_abs_as
FROM top
ORDER BY rank
