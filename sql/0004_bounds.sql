-- Upper bounds for the numbers an operator sets, the same as b3lb/validation.py's, so values
-- written with psql (or before the admin commands checked them) cannot hurt either: the load
-- formula runs for every node on every refresh, and the old checks (x >= 0) let NaN, Infinity and
-- a billion CPU series terms through (NaN compares greater than every number in PostgreSQL).
-- Rows outside the bounds are clamped first (NaN factors to 0, as the load formula reads them),
-- then each column's check constraint is replaced under its old name.

UPDATE cluster
SET load_a_factor = CASE WHEN load_a_factor = 'NaN' THEN 0 ELSE LEAST(GREATEST(load_a_factor, 0), 1000000) END
WHERE NOT (load_a_factor BETWEEN 0 AND 1000000);
UPDATE cluster
SET load_m_factor = CASE WHEN load_m_factor = 'NaN' THEN 0 ELSE LEAST(GREATEST(load_m_factor, 0), 1000000) END
WHERE NOT (load_m_factor BETWEEN 0 AND 1000000);
UPDATE cluster SET load_cpu_series_iteratations = 100 WHERE load_cpu_series_iteratations > 100;
UPDATE cluster SET load_cpu_maximum = 1000000 WHERE load_cpu_maximum > 1000000;

ALTER TABLE cluster
    DROP CONSTRAINT IF EXISTS cluster_load_a_factor_check,
    ADD CONSTRAINT cluster_load_a_factor_check CHECK (load_a_factor BETWEEN 0 AND 1000000),
    DROP CONSTRAINT IF EXISTS cluster_load_m_factor_check,
    ADD CONSTRAINT cluster_load_m_factor_check CHECK (load_m_factor BETWEEN 0 AND 1000000),
    DROP CONSTRAINT IF EXISTS cluster_load_cpu_series_iteratations_check,
    ADD CONSTRAINT cluster_load_cpu_series_iteratations_check CHECK (load_cpu_series_iteratations BETWEEN 0 AND 100),
    DROP CONSTRAINT IF EXISTS cluster_load_cpu_maximum_check,
    ADD CONSTRAINT cluster_load_cpu_maximum_check CHECK (load_cpu_maximum BETWEEN 0 AND 1000000);

-- Limits: 0 means unlimited, and ten million is more than any fleet holds.
UPDATE tenant SET attendee_limit = LEAST(attendee_limit, 10000000), meeting_limit = LEAST(meeting_limit, 10000000)
WHERE attendee_limit > 10000000 OR meeting_limit > 10000000;
UPDATE secret SET attendee_limit = LEAST(attendee_limit, 10000000), meeting_limit = LEAST(meeting_limit, 10000000)
WHERE attendee_limit > 10000000 OR meeting_limit > 10000000;

ALTER TABLE tenant
    DROP CONSTRAINT IF EXISTS tenant_attendee_limit_check,
    ADD CONSTRAINT tenant_attendee_limit_check CHECK (attendee_limit BETWEEN 0 AND 10000000),
    DROP CONSTRAINT IF EXISTS tenant_meeting_limit_check,
    ADD CONSTRAINT tenant_meeting_limit_check CHECK (meeting_limit BETWEEN 0 AND 10000000);
ALTER TABLE secret
    DROP CONSTRAINT IF EXISTS secret_attendee_limit_check,
    ADD CONSTRAINT secret_attendee_limit_check CHECK (attendee_limit BETWEEN 0 AND 10000000),
    DROP CONSTRAINT IF EXISTS secret_meeting_limit_check,
    ADD CONSTRAINT secret_meeting_limit_check CHECK (meeting_limit BETWEEN 0 AND 10000000);

-- Recording sizes: up to 8192 pixels a side.
UPDATE record_profile
SET width = LEAST(width, 8192), height = LEAST(height, 8192),
    webcam_width = LEAST(webcam_width, 8192), webcam_height = LEAST(webcam_height, 8192)
WHERE GREATEST(width, height, webcam_width, webcam_height) > 8192;

ALTER TABLE record_profile
    DROP CONSTRAINT IF EXISTS record_profile_width_check,
    ADD CONSTRAINT record_profile_width_check CHECK (width BETWEEN 1 AND 8192),
    DROP CONSTRAINT IF EXISTS record_profile_height_check,
    ADD CONSTRAINT record_profile_height_check CHECK (height BETWEEN 1 AND 8192),
    DROP CONSTRAINT IF EXISTS record_profile_webcam_width_check,
    ADD CONSTRAINT record_profile_webcam_width_check CHECK (webcam_width BETWEEN 1 AND 8192),
    DROP CONSTRAINT IF EXISTS record_profile_webcam_height_check,
    ADD CONSTRAINT record_profile_webcam_height_check CHECK (webcam_height BETWEEN 1 AND 8192);
