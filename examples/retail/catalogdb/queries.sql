-- name: GetProduct :one
SELECT id, article_number, name, category_id, price_cents, updated_at, version
FROM products
WHERE id = @id;

-- name: ListProductsByIDs :many
SELECT id, article_number, name, category_id, price_cents, updated_at, version
FROM products
WHERE id = ANY(@ids::bigint[])
ORDER BY id;

-- name: GetStock :one
SELECT article_number, uom, store_code, quantity, updated_at, version
FROM stock
WHERE article_number = @article_number
  AND uom = @uom
  AND store_code = @store_code;

-- ListStock reads the rows for a set of keys given as three parallel arrays
-- (element i of each array is one key); keys with no row are left out.
-- The three single-array unnest calls in one select list run in lockstep
-- (PostgreSQL 10+), zipping the arrays into keys; sqlc's catalogue has no
-- multi-array unnest(a, b, c).
-- name: ListStock :many
SELECT s.article_number, s.uom, s.store_code, s.quantity, s.updated_at, s.version
FROM stock AS s
JOIN (
    SELECT unnest(@article_numbers::text[]) AS article_number,
           unnest(@uoms::text[]) AS uom,
           unnest(@store_codes::text[]) AS store_code
) AS k
  ON s.article_number = k.article_number
 AND s.uom = k.uom
 AND s.store_code = k.store_code
ORDER BY s.article_number, s.uom, s.store_code;

-- UpdateProductPrice sets a product's price and, like every write to a cached
-- table, draws a new version from the identity sequence.
-- name: UpdateProductPrice :one
UPDATE products
SET price_cents = @price_cents,
    updated_at = now(),
    version = DEFAULT
WHERE id = @id
RETURNING *;
