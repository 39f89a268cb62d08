-- The operator dashboard (b3lb/admin/events.py): read once per tick, whatever the number of clients.

-- name: dashboard_render_queue
-- The render queue by state (render_job of 0005/0006; a finished job's row is deleted): how many,
-- how many of the queued ones are due, and the age of the oldest queued job in seconds.
SELECT state,
       count(*)::int AS jobs,
       count(*) FILTER (WHERE state = 'QUEUED' AND not_before <= now())::int AS due,
       extract(epoch FROM now() - min(queued_at))::float8 AS oldest_seconds
FROM render_job
GROUP BY state
