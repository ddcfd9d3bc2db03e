-- Per model of a leaderboard (`sing leaderboard`): IS/|AS| ratio with its interval, |AS|, IS, top-1 and size, best ratio first.
--
-- Question: across the model zoo, which architectures and training recipes hide the most
-- class semantics in their null space (median |AS|, lower is better) against how much
-- harmless invariance they have (median IS, higher is better), and does that track
-- accuracy, size or pretraining data?
--
-- Parameters (bound by DuckDB; NULL = no filter):
--   $leaderboard_glob  VARCHAR  auto  DIR/leaderboard/**/*.parquet, bound by the runner from --results
--   $run        VARCHAR  NULL     only this board id (the run= partition)
--   $model      VARCHAR  NULL     only this model slug
--   $family     VARCHAR  NULL     only this architecture family (resnet, vit, convnext, ...)
--   $pretrain   VARCHAR  NULL     only this training recipe (in1k, in21k_ft_in1k, clip, distilled, ...)
--   $status     VARCHAR  NULL     only rows of this status, one of 'ok', 'skipped', 'failed' (NULL: all, ok rows first)
--   $order_by   VARCHAR  'ratio'  sort key of the ok rows, one of 'ratio', 'ratio_of_means', 'median_abs_as', 'median_is', 'top1', 'params', 'null_dim', 'heldout_cosine', 'seconds', 'model'
--   $ascending  BOOLEAN  NULL     NULL: the key's own direction (below); true/false force ascending/descending
--   $top        INTEGER  NULL     keep the first N ok rows of each board in that order (skipped and failed rows dropped)
--
-- Sort keys and their own direction (best first): ratio = median_ratio desc, ratio_of_means
-- desc, median_abs_as asc (less leakage first), median_is desc, top1 desc, params desc
-- (largest first), null_dim desc, heldout_cosine desc, seconds desc (slowest first), model asc.
--
-- Output columns (one row per model and board; angles in degrees):
--   run, rank, model           board id; position of an ok row in its board in this order
--                              (1 = first; NULL for skipped and failed rows); model slug
--   family, pretrain           architecture family and training recipe (read from the tag)
--   status, reason             'ok', or 'skipped'/'failed' with the reason (numbers NULL)
--   top1                       top-1 accuracy on the eval shards (fraction)
--   median_abs_as, median_is   medians over the scored eval images of |AS| (true-class prompt) and IS
--   median_ratio, median_ratio_lo, median_ratio_hi
--                              median over images of IS/|AS|, with its bootstrap 95% interval
--   ratio_of_means, ratio_of_means_lo, ratio_of_means_hi
--                              mean(IS) / mean(|AS|), with its bootstrap 95% interval
--   params, num_features, num_classes, null_dim
--                              parameter count; head input and output dims; m - rank(W)
--   n_images, n_scored         eval images, and those with a valid AS and IS
--   heldout_cosine, heldout_r2 the translator's mean cosine(T(f), z) and R^2 on held-out images
--   top_concepts               the concepts that moved most, as the board lists them, as text
--                              'concept +mean_as, ...' (mean AS toward the concept, 2 decimals)
--   seconds                    time spent on the model
--   model_string, model_id, eval_transform, translator_id, audit_run
--                              the MODEL string, its id, the eval preprocessing, the translator
--                              and the audit run whose per-image rows back the numbers
-- Order: run, then the ok rows by the key (NULL values last, ties by model), then failed and
-- skipped rows by status and model.
--
-- @nonempty: run model family pretrain status
WITH board AS (
    SELECT *,
           CASE WHEN status = 'ok' THEN CASE $order_by
               WHEN 'ratio'          THEN median_ratio
               WHEN 'ratio_of_means' THEN ratio_of_means
               WHEN 'median_abs_as'  THEN median_abs_as
               WHEN 'median_is'      THEN median_is
               WHEN 'top1'           THEN top1
               WHEN 'params'         THEN params::DOUBLE
               WHEN 'null_dim'       THEN null_dim::DOUBLE
               WHEN 'heldout_cosine' THEN heldout_cosine
               WHEN 'seconds'        THEN seconds
           END END                                                        AS sort_value,
           coalesce($ascending, $order_by IN ('median_abs_as', 'model'))  AS up
    FROM result_rows($leaderboard_glob, $model, $run)     -- queries/_macros.sql
    WHERE ($family IS NULL OR family = $family)
      AND ($pretrain IS NULL OR pretrain = $pretrain)
      AND ($status IS NULL OR status = $status)
),
ordered AS (
    SELECT *,
           row_number() OVER (
               PARTITION BY run
               ORDER BY status <> 'ok',
                        CASE WHEN up THEN sort_value END ASC NULLS LAST,
                        CASE WHEN NOT up THEN sort_value END DESC NULLS LAST,
                        CASE WHEN $order_by = 'model' AND NOT up AND status = 'ok' THEN model END DESC,
                        status, model)                                    AS pos
    FROM board
)
SELECT run,
       CASE WHEN status = 'ok' THEN pos END                               AS rank,
       model, family, pretrain, status, reason, top1,
       median_abs_as, median_is,
       median_ratio, median_ratio_lo, median_ratio_hi,
       ratio_of_means, ratio_of_means_lo, ratio_of_means_hi,
       params, num_features, num_classes, null_dim, n_images, n_scored,
       heldout_cosine, heldout_r2,
       array_to_string(list_transform(top_concepts,
           lambda c: c.concept || ' ' || coalesce(printf('%+.2f', c.mean_as), 'NULL')), ', ') AS top_concepts,
       seconds, model_string, model_id, eval_transform, translator_id, audit_run
FROM ordered
WHERE $top IS NULL OR (status = 'ok' AND pos <= $top)
ORDER BY run, pos
