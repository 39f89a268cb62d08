-- b3lb data model, after ../shared/spec/schema.md.
-- Every table of the spec; where the spec is silent the choice is noted in a comment.
-- ON DELETE rules: configuration that other rows depend on is RESTRICTed (you cannot drop a
-- cluster group that tenants still use); rows that only make sense with their parent CASCADE.

-- Load balancing ---------------------------------------------------------------------------

CREATE TABLE cluster (
    id                            serial PRIMARY KEY,
    name                          varchar(200) NOT NULL UNIQUE CHECK (name <> ''),
    load_a_factor                 double precision NOT NULL DEFAULT 1.0 CHECK (load_a_factor >= 0),
    load_m_factor                 double precision NOT NULL DEFAULT 10.0 CHECK (load_m_factor >= 0),
    -- Column name spelled as in the data model (sic).
    load_cpu_series_iteratations  integer NOT NULL DEFAULT 6 CHECK (load_cpu_series_iteratations >= 0),
    load_cpu_maximum              integer NOT NULL DEFAULT 5000 CHECK (load_cpu_maximum >= 0),
    sha_algorithm                 varchar(10) NOT NULL DEFAULT 'SHA256'
                                  CHECK (sha_algorithm IN ('SHA256', 'SHA384', 'SHA512'))
);

CREATE TABLE node (
    id              serial PRIMARY KEY,
    -- A cluster with nodes cannot be dropped by accident.
    cluster_id      integer NOT NULL REFERENCES cluster (id) ON DELETE RESTRICT,
    slug            varchar(200) NOT NULL CHECK (slug ~ '^[-a-zA-Z0-9_]+$'),
    domain          varchar(200) NOT NULL CHECK (domain <> ''),
    secret          varchar(200) NOT NULL CHECK (secret <> ''),
    protocol        varchar(10) NOT NULL DEFAULT 'https' CHECK (protocol IN ('http', 'https')),
    port            integer NOT NULL DEFAULT 443 CHECK (port BETWEEN 1 AND 65535),
    bbb_endpoint    varchar(200) NOT NULL DEFAULT 'bigbluebutton/api/',
    load_endpoint   varchar(200) NOT NULL DEFAULT 'b3lb/load',
    cpu_load        double precision NOT NULL DEFAULT 0 CHECK (cpu_load BETWEEN 0 AND 100),
    attendees       integer NOT NULL DEFAULT 0 CHECK (attendees >= 0),
    meetings        integer NOT NULL DEFAULT 0 CHECK (meetings >= 0),
    has_errors      boolean NOT NULL DEFAULT false,
    maintenance     boolean NOT NULL DEFAULT false,
    UNIQUE (cluster_id, slug),
    UNIQUE (cluster_id, domain)
);
CREATE INDEX node_slug_idx ON node (slug);
CREATE INDEX node_has_errors_idx ON node (has_errors);
CREATE INDEX node_maintenance_idx ON node (maintenance);

CREATE TABLE cluster_group (
    id    serial PRIMARY KEY,
    name  varchar(200) NOT NULL UNIQUE CHECK (name <> '')
);

CREATE TABLE cluster_group_relation (
    id                serial PRIMARY KEY,
    cluster_group_id  integer NOT NULL REFERENCES cluster_group (id) ON DELETE CASCADE,
    cluster_id        integer NOT NULL REFERENCES cluster (id) ON DELETE CASCADE,
    UNIQUE (cluster_group_id, cluster_id)
);

-- Tenants ----------------------------------------------------------------------------------

CREATE TABLE tenant (
    id                 serial PRIMARY KEY,
    slug               varchar(10) NOT NULL UNIQUE CHECK (slug ~ '^[A-Z]{2,10}$'),
    -- Tenants must be moved to another group before their group can be dropped.
    cluster_group_id   integer NOT NULL REFERENCES cluster_group (id) ON DELETE RESTRICT,
    -- 0 means unlimited (spec section 6).
    attendee_limit     integer NOT NULL DEFAULT 999999 CHECK (attendee_limit >= 0),
    meeting_limit      integer NOT NULL DEFAULT 999999 CHECK (meeting_limit >= 0),
    record_by_default  boolean NOT NULL DEFAULT false,
    -- Canonical lower-case UUID text, sent as the Authorization header by stats readers.
    stats_token        varchar(40) NOT NULL UNIQUE DEFAULT gen_random_uuid()::text
                       CHECK (stats_token <> '')
);

CREATE TABLE secret (
    id                 serial PRIMARY KEY,
    tenant_id          integer NOT NULL REFERENCES tenant (id) ON DELETE CASCADE,
    sub_id             integer NOT NULL CHECK (sub_id >= 0 AND sub_id <= 999),
    secret             varchar(64) NOT NULL CHECK (char_length(secret) = 64),
    -- Rollover secret: empty, or a full 64-character secret. An empty one never authenticates.
    secret2            varchar(64) NOT NULL DEFAULT '' CHECK (secret2 = '' OR char_length(secret2) = 64),
    -- NULL: inherit the tenant's value.
    attendee_limit     integer CHECK (attendee_limit >= 0),
    meeting_limit      integer CHECK (meeting_limit >= 0),
    slide_id           integer,
    record_by_default  boolean,
    UNIQUE (tenant_id, sub_id)
);

CREATE TABLE asset (
    id          serial PRIMARY KEY,
    tenant_id   integer NOT NULL UNIQUE REFERENCES tenant (id) ON DELETE CASCADE,
    -- File names as uploaded; '' means no such asset. The bytes live in the *_data columns.
    logo        varchar(200) NOT NULL DEFAULT '',
    logo_mime   varchar(100) NOT NULL DEFAULT '',
    logo_data   bytea,
    slide       varchar(200) NOT NULL DEFAULT '',
    slide_mime  varchar(100) NOT NULL DEFAULT '',
    slide_data  bytea,
    css         varchar(200) NOT NULL DEFAULT '',
    css_mime    varchar(100) NOT NULL DEFAULT '',
    css_data    bytea,
    CHECK ((logo = '') = (logo_data IS NULL)),
    CHECK ((slide = '') = (slide_data IS NULL)),
    CHECK ((css = '') = (css_data IS NULL))
);

CREATE TABLE parameter (
    id           serial PRIMARY KEY,
    tenant_id    integer REFERENCES tenant (id) ON DELETE CASCADE,
    secret_id    integer REFERENCES secret (id) ON DELETE CASCADE,
    create_join  varchar(10) NOT NULL CHECK (create_join IN ('CREATE', 'JOIN', 'BOTH')),
    mode         varchar(10) NOT NULL CHECK (mode IN ('BLOCK', 'SET', 'OVERRIDE')),
    name         varchar(200) NOT NULL CHECK (name <> ''),
    value        varchar(200) NOT NULL DEFAULT '',
    CHECK (num_nonnulls(tenant_id, secret_id) = 1),
    -- NULLS NOT DISTINCT: exactly one of tenant/secret is NULL, and the rule must still be unique.
    UNIQUE NULLS NOT DISTINCT (tenant_id, secret_id, create_join, name)
);

-- Meetings ---------------------------------------------------------------------------------

CREATE TABLE meeting (
    id                  bigserial PRIMARY KEY,
    secret_id           integer NOT NULL REFERENCES secret (id) ON DELETE CASCADE,
    meeting_id          varchar(200) NOT NULL CHECK (meeting_id <> ''),
    -- 256, not the model's 200: BBB and the create call accept names of up to 256 characters.
    meeting_name        varchar(256) NOT NULL DEFAULT '',
    -- Removing a node forgets the meetings it hosted (the CLI asks for --force first).
    node_id             integer NOT NULL REFERENCES node (id) ON DELETE CASCADE,
    create_time         timestamptz NOT NULL DEFAULT now(),
    end_callback_url    text NOT NULL DEFAULT '',
    attendees           integer NOT NULL DEFAULT 0,
    listeners           integer NOT NULL DEFAULT 0,
    voice               integer NOT NULL DEFAULT 0,
    videos              integer NOT NULL DEFAULT 0,
    moderators          integer NOT NULL DEFAULT 0,
    origin              varchar(200) NOT NULL DEFAULT '',
    -- Not in the model: the stats endpoint groups by bbb-origin-server-name as well.
    origin_server_name  varchar(200) NOT NULL DEFAULT '',
    nonce               uuid NOT NULL DEFAULT gen_random_uuid(),
    UNIQUE (secret_id, meeting_id)
);
CREATE INDEX meeting_meeting_id_idx ON meeting (meeting_id);
CREATE INDEX meeting_node_idx ON meeting (node_id);
CREATE INDEX meeting_nonce_idx ON meeting (nonce);

CREATE TABLE node_meeting_list (
    id            serial PRIMARY KEY,
    node_id       integer NOT NULL UNIQUE REFERENCES node (id) ON DELETE CASCADE,
    meetings_xml  text NOT NULL DEFAULT ''
);

CREATE TABLE secret_meeting_list (
    id            serial PRIMARY KEY,
    secret_id     integer NOT NULL UNIQUE REFERENCES secret (id) ON DELETE CASCADE,
    meetings_xml  text NOT NULL DEFAULT ''
);

-- Recordings -------------------------------------------------------------------------------

CREATE TABLE record_profile (
    id              serial PRIMARY KEY,
    name            varchar(200) NOT NULL UNIQUE CHECK (name <> ''),
    width           integer NOT NULL DEFAULT 1920 CHECK (width > 0),
    height          integer NOT NULL DEFAULT 1080 CHECK (height > 0),
    webcam_width    integer NOT NULL DEFAULT 320 CHECK (webcam_width > 0),
    webcam_height   integer NOT NULL DEFAULT 180 CHECK (webcam_height > 0),
    webcam_stretch  boolean NOT NULL DEFAULT false,
    webcam_crop     boolean NOT NULL DEFAULT false,
    format          varchar(10) NOT NULL DEFAULT 'MP4' CHECK (format IN ('MP4', 'WEBM')),
    annotate        boolean NOT NULL DEFAULT true,
    backdrop        boolean NOT NULL DEFAULT true
);

CREATE TABLE record_set (
    id            varchar(200) PRIMARY KEY CHECK (id <> ''),
    nonce         uuid NOT NULL,
    meeting_id    varchar(200) NOT NULL DEFAULT '',
    tenant_slug   varchar(10) NOT NULL DEFAULT '',
    meta_name     varchar(256) NOT NULL DEFAULT '',
    start_time    timestamptz,
    end_time      timestamptz,
    participants  integer NOT NULL DEFAULT 0 CHECK (participants >= 0),
    status        varchar(20) NOT NULL DEFAULT 'UNKNOWN'
                  CHECK (status IN ('UNKNOWN', 'UPLOADED', 'RENDERED', 'DELETING')),
    format_type   varchar(20) NOT NULL DEFAULT 'presentation' CHECK (format_type IN ('presentation', 'video')),
    -- bigint: raw archives pass 2 GiB.
    raw_size      bigint NOT NULL DEFAULT 0 CHECK (raw_size >= 0)
);
CREATE INDEX record_set_nonce_idx ON record_set (nonce);
CREATE INDEX record_set_tenant_slug_idx ON record_set (tenant_slug);

CREATE TABLE record (
    id            serial PRIMARY KEY,
    recordset_id  varchar(200) NOT NULL REFERENCES record_set (id) ON DELETE CASCADE,
    record_id     varchar(200) NOT NULL,
    -- A profile that rendered videos cannot vanish under them.
    profile_id    integer NOT NULL REFERENCES record_profile (id) ON DELETE RESTRICT,
    published     boolean NOT NULL DEFAULT true,
    listed        boolean NOT NULL DEFAULT true,
    file          varchar(200) NOT NULL DEFAULT '',
    meeting_id    varchar(200) NOT NULL DEFAULT '',
    nonce         uuid NOT NULL DEFAULT gen_random_uuid(),
    tenant_slug   varchar(10) NOT NULL DEFAULT '',
    meta_name     varchar(256) NOT NULL DEFAULT '',
    start_time    timestamptz,
    end_time      timestamptz,
    participants  integer NOT NULL DEFAULT 0 CHECK (participants >= 0),
    format_type   varchar(20) NOT NULL DEFAULT 'presentation' CHECK (format_type IN ('presentation', 'video')),
    UNIQUE (recordset_id, profile_id)
);
CREATE INDEX record_nonce_idx ON record (nonce);
CREATE INDEX record_record_id_idx ON record (record_id);

-- Metrics and statistics -------------------------------------------------------------------

CREATE TABLE metric (
    id                     bigserial PRIMARY KEY,
    tenant_id              integer REFERENCES tenant (id) ON DELETE CASCADE,
    node_id                integer REFERENCES node (id) ON DELETE CASCADE,
    time                   timestamptz NOT NULL DEFAULT now(),
    attendees              integer NOT NULL DEFAULT 0,
    meetings               integer NOT NULL DEFAULT 0,
    listeners              integer NOT NULL DEFAULT 0,
    videos                 integer NOT NULL DEFAULT 0,
    voices                 integer NOT NULL DEFAULT 0,
    -- Counters are bigint: they only grow.
    attendees_joined_sum   bigint NOT NULL DEFAULT 0,
    meetings_created_sum   bigint NOT NULL DEFAULT 0,
    meetings_duration_sum  bigint NOT NULL DEFAULT 0,
    attendee_limit_hits    bigint NOT NULL DEFAULT 0,
    meeting_limit_hits     bigint NOT NULL DEFAULT 0
);
CREATE INDEX metric_tenant_idx ON metric (tenant_id);
CREATE INDEX metric_node_idx ON metric (node_id);
CREATE INDEX metric_time_idx ON metric (time);

CREATE TABLE stats (
    id                  serial PRIMARY KEY,
    tenant_id           integer NOT NULL REFERENCES tenant (id) ON DELETE CASCADE,
    time                timestamptz NOT NULL DEFAULT now(),
    -- Not in the model: /b3lb/stats groups a tenant's figures by these two metadata values.
    origin_server_name  varchar(200) NOT NULL DEFAULT '',
    origin              varchar(200) NOT NULL DEFAULT '',
    attendees           integer NOT NULL DEFAULT 0,
    meetings            integer NOT NULL DEFAULT 0,
    listeners           integer NOT NULL DEFAULT 0,
    videos              integer NOT NULL DEFAULT 0,
    voices              integer NOT NULL DEFAULT 0,
    moderators          integer NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, origin_server_name, origin)
);

CREATE TABLE secret_metrics_list (
    id            serial PRIMARY KEY,
    secret_id     integer NOT NULL UNIQUE REFERENCES secret (id) ON DELETE CASCADE,
    metrics_text  text NOT NULL DEFAULT ''
);
