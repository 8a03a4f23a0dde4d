-- A queue's history: $1 text queue, $2 int8 limit → history rows, most recent first.
SELECT {finished_columns} FROM {history} WHERE queue = $1::text
ORDER BY finished_at DESC, id DESC LIMIT $2::int8
