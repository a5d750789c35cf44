-- The portal (the same as SQLite schema 4): accounts that sign in with an email and a password, their server-side
-- sessions, and the billing information that approves an organization. API keys remember
-- when they were last used. Accounts made by `sie admin` have no email and cannot sign in.
ALTER TABLE accounts ADD COLUMN email TEXT;
ALTER TABLE accounts ADD COLUMN password_hash TEXT;
CREATE UNIQUE INDEX accounts_by_email ON accounts (email);

ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;

-- Only the SHA-256 (hex) of a session token is stored; `csrf` is the token every form of
-- the session carries.
CREATE TABLE sessions (
    hash         TEXT    PRIMARY KEY,
    account_id   BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    csrf         TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    last_seen_at BIGINT  NOT NULL
);
CREATE INDEX sessions_by_account ON sessions (account_id);

CREATE TABLE billing (
    org_id     BIGINT  PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    email      TEXT    NOT NULL,
    address    TEXT    NOT NULL,
    country    TEXT    NOT NULL,
    tax_id     TEXT,
    updated_at BIGINT  NOT NULL
);
