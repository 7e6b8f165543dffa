-- authmigrate target schema. Applied idempotently by the `prepare` task with
-- search_path set to the run's target schema, so table names stay unqualified here.
-- Every constraint is named: the validate task reads the declared names from this
-- file and checks them against the catalog, and `prepare` re-adds any that were
-- dropped by hand (statements of the form ALTER TABLE t ADD CONSTRAINT c ... are run
-- only when c is missing). Indexes use CREATE INDEX IF NOT EXISTS for the same reason.
-- Statements are separated by a semicolon at the end of a line.

CREATE TABLE IF NOT EXISTS users (
    id                         text        NOT NULL,
    mongo_id                   text        NOT NULL,
    username                   text        NOT NULL,
    email                      text,
    password_hash              text,
    first_name                 text,
    last_name                  text,
    identity_provider          text,
    identity_provider_user_id  text,
    passkey_id                 text,
    passkey_public_key         text,
    mfa_secret                 text,
    mfa_enabled                boolean     NOT NULL DEFAULT false,
    email_verified             boolean     NOT NULL DEFAULT false,
    sign_count                 bigint      NOT NULL DEFAULT 0,
    can_manage_apps            boolean     NOT NULL DEFAULT false,
    banned                     boolean     NOT NULL DEFAULT false,
    banned_at                  timestamptz,
    banned_reason              text,
    banned_by                  text,
    created_at                 timestamptz,
    updated_at                 timestamptz,
    synced_at                  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS roles (
    id    text NOT NULL,
    name  text NOT NULL
);

CREATE TABLE IF NOT EXISTS user_roles (
    user_id  text NOT NULL,
    role_id  text NOT NULL
);

CREATE TABLE IF NOT EXISTS permissions (
    id           text NOT NULL,
    name         text NOT NULL,
    description  text
);

CREATE TABLE IF NOT EXISTS role_permissions (
    role_id        text NOT NULL,
    permission_id  text NOT NULL
);

CREATE TABLE IF NOT EXISTS oauth_client_apps (
    id                     text        NOT NULL,
    mongo_id               text        NOT NULL,
    client_id              text        NOT NULL,
    client_secret          text,
    name                   text,
    redirect_uri           text,
    access_token_validity  integer,
    is_public_client       boolean     NOT NULL DEFAULT false,
    owner_user_id          text,
    disabled               boolean     NOT NULL DEFAULT false,
    disabled_at            timestamptz,
    disabled_reason        text,
    created_at             timestamptz,
    updated_at             timestamptz,
    synced_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS client_roles (
    id                   text        NOT NULL,
    mongo_id             text        NOT NULL,
    oauth_client_app_id  text        NOT NULL,
    oauth_client_id      text,
    name                 text        NOT NULL,
    owner_user_id        text,
    grants_all_users     boolean     NOT NULL DEFAULT false,
    created_at           timestamptz,
    updated_at           timestamptz,
    synced_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS client_role_users (
    client_role_id  text NOT NULL,
    user_id         text NOT NULL
);

CREATE TABLE IF NOT EXISTS user_app_consents (
    id                   text        NOT NULL,
    mongo_id             text        NOT NULL,
    user_id              text        NOT NULL,
    oauth_client_app_id  text        NOT NULL,
    client_id            text,
    first_auth_at        timestamptz,
    last_auth_at         timestamptz,
    created_at           timestamptz,
    updated_at           timestamptz,
    synced_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS user_app_consent_scopes (
    consent_id  text NOT NULL,
    scope       text NOT NULL
);

CREATE TABLE IF NOT EXISTS invitations (
    id                text        NOT NULL,
    mongo_id          text        NOT NULL,
    email             text        NOT NULL,
    token_hash        text,
    invited_by        text,
    can_manage_apps   boolean     NOT NULL DEFAULT false,
    expires_at        timestamptz,
    accepted_at       timestamptz,
    revoked_at        timestamptz,
    accepted_user_id  text,
    created_at        timestamptz,
    updated_at        timestamptz,
    synced_at         timestamptz NOT NULL DEFAULT now()
);

-- the roles an invitation grants on acceptance: a role no user has yet is fine (no FK to roles)
CREATE TABLE IF NOT EXISTS invitation_roles (
    invitation_id  text NOT NULL,
    role_name      text NOT NULL
);

-- a NULL setting: the document does not have it, the app's own default applies
CREATE TABLE IF NOT EXISTS app_settings (
    id                           text        NOT NULL,
    mongo_id                     text        NOT NULL,
    registration_enabled         boolean,
    password_reset_enabled       boolean,
    app_creation_enabled         boolean,
    allow_all_users_manage_apps  boolean,
    maintenance_mode             boolean,
    maintenance_message          text,
    social_login_enabled         boolean,
    updated_by                   text,
    created_at                   timestamptz,
    updated_at                   timestamptz,
    synced_at                    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS app_setting_email_domains (
    app_setting_id  text NOT NULL,
    domain          text NOT NULL
);

CREATE TABLE IF NOT EXISTS sessions (
    id                   text        NOT NULL,
    user_id              text        NOT NULL,
    kind                 text        NOT NULL,
    oauth_client_app_id  text,
    ip_address           inet,
    user_agent           text,
    scope                text,
    created_at           timestamptz,
    expires_at           timestamptz,
    synced_at            timestamptz NOT NULL DEFAULT now()
);

-- Primary keys ---------------------------------------------------------------
ALTER TABLE users ADD CONSTRAINT users_pkey PRIMARY KEY (id);
ALTER TABLE roles ADD CONSTRAINT roles_pkey PRIMARY KEY (id);
ALTER TABLE permissions ADD CONSTRAINT permissions_pkey PRIMARY KEY (id);
ALTER TABLE oauth_client_apps ADD CONSTRAINT oauth_client_apps_pkey PRIMARY KEY (id);
ALTER TABLE client_roles ADD CONSTRAINT client_roles_pkey PRIMARY KEY (id);
ALTER TABLE user_roles ADD CONSTRAINT user_roles_pkey PRIMARY KEY (user_id, role_id);
ALTER TABLE role_permissions ADD CONSTRAINT role_permissions_pkey PRIMARY KEY (role_id, permission_id);
ALTER TABLE client_role_users ADD CONSTRAINT client_role_users_pkey PRIMARY KEY (client_role_id, user_id);
ALTER TABLE sessions ADD CONSTRAINT sessions_pkey PRIMARY KEY (id);
ALTER TABLE user_app_consents ADD CONSTRAINT user_app_consents_pkey PRIMARY KEY (id);
ALTER TABLE user_app_consent_scopes ADD CONSTRAINT user_app_consent_scopes_pkey PRIMARY KEY (consent_id, scope);
ALTER TABLE invitations ADD CONSTRAINT invitations_pkey PRIMARY KEY (id);
ALTER TABLE invitation_roles ADD CONSTRAINT invitation_roles_pkey PRIMARY KEY (invitation_id, role_name);
ALTER TABLE app_settings ADD CONSTRAINT app_settings_pkey PRIMARY KEY (id);
ALTER TABLE app_setting_email_domains ADD CONSTRAINT app_setting_email_domains_pkey PRIMARY KEY (app_setting_id, domain);

-- Unique constraints (deferrable so one merge can swap usernames/emails between users)
ALTER TABLE users ADD CONSTRAINT users_mongo_id_key UNIQUE (mongo_id);
ALTER TABLE users ADD CONSTRAINT users_username_key UNIQUE (username) DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email) DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE users ADD CONSTRAINT users_identity_provider_user_key UNIQUE (identity_provider, identity_provider_user_id) DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE oauth_client_apps ADD CONSTRAINT oauth_client_apps_mongo_id_key UNIQUE (mongo_id);
ALTER TABLE oauth_client_apps ADD CONSTRAINT oauth_client_apps_client_id_key UNIQUE (client_id) DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE client_roles ADD CONSTRAINT client_roles_mongo_id_key UNIQUE (mongo_id);
ALTER TABLE client_roles ADD CONSTRAINT client_roles_app_name_key UNIQUE (oauth_client_app_id, name) DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE user_app_consents ADD CONSTRAINT user_app_consents_mongo_id_key UNIQUE (mongo_id);
ALTER TABLE user_app_consents ADD CONSTRAINT user_app_consents_user_app_key UNIQUE (user_id, oauth_client_app_id) DEFERRABLE INITIALLY IMMEDIATE;
ALTER TABLE invitations ADD CONSTRAINT invitations_mongo_id_key UNIQUE (mongo_id);
ALTER TABLE app_settings ADD CONSTRAINT app_settings_mongo_id_key UNIQUE (mongo_id);

-- Foreign keys ---------------------------------------------------------------
ALTER TABLE user_roles ADD CONSTRAINT user_roles_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;
ALTER TABLE user_roles ADD CONSTRAINT user_roles_role_id_fkey FOREIGN KEY (role_id) REFERENCES roles (id) ON DELETE CASCADE;
ALTER TABLE role_permissions ADD CONSTRAINT role_permissions_role_id_fkey FOREIGN KEY (role_id) REFERENCES roles (id) ON DELETE CASCADE;
ALTER TABLE role_permissions ADD CONSTRAINT role_permissions_permission_id_fkey FOREIGN KEY (permission_id) REFERENCES permissions (id) ON DELETE CASCADE;
ALTER TABLE oauth_client_apps ADD CONSTRAINT oauth_client_apps_owner_user_id_fkey FOREIGN KEY (owner_user_id) REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE client_roles ADD CONSTRAINT client_roles_oauth_client_app_id_fkey FOREIGN KEY (oauth_client_app_id) REFERENCES oauth_client_apps (id) ON DELETE CASCADE;
ALTER TABLE client_roles ADD CONSTRAINT client_roles_owner_user_id_fkey FOREIGN KEY (owner_user_id) REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE client_role_users ADD CONSTRAINT client_role_users_client_role_id_fkey FOREIGN KEY (client_role_id) REFERENCES client_roles (id) ON DELETE CASCADE;
ALTER TABLE client_role_users ADD CONSTRAINT client_role_users_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;
ALTER TABLE sessions ADD CONSTRAINT sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;
ALTER TABLE sessions ADD CONSTRAINT sessions_oauth_client_app_id_fkey FOREIGN KEY (oauth_client_app_id) REFERENCES oauth_client_apps (id) ON DELETE CASCADE;
-- a consent dies with its user and with its app
ALTER TABLE user_app_consents ADD CONSTRAINT user_app_consents_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;
ALTER TABLE user_app_consents ADD CONSTRAINT user_app_consents_oauth_client_app_id_fkey FOREIGN KEY (oauth_client_app_id) REFERENCES oauth_client_apps (id) ON DELETE CASCADE;
ALTER TABLE user_app_consent_scopes ADD CONSTRAINT user_app_consent_scopes_consent_id_fkey FOREIGN KEY (consent_id) REFERENCES user_app_consents (id) ON DELETE CASCADE;
ALTER TABLE invitations ADD CONSTRAINT invitations_accepted_user_id_fkey FOREIGN KEY (accepted_user_id) REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE invitation_roles ADD CONSTRAINT invitation_roles_invitation_id_fkey FOREIGN KEY (invitation_id) REFERENCES invitations (id) ON DELETE CASCADE;
ALTER TABLE app_setting_email_domains ADD CONSTRAINT app_setting_email_domains_app_setting_id_fkey FOREIGN KEY (app_setting_id) REFERENCES app_settings (id) ON DELETE CASCADE;

-- Secondary indexes (the user side of every join table, and FK columns) ------
CREATE INDEX IF NOT EXISTS user_roles_user_id_idx ON user_roles (user_id);
CREATE INDEX IF NOT EXISTS user_roles_role_id_idx ON user_roles (role_id);
CREATE INDEX IF NOT EXISTS role_permissions_permission_id_idx ON role_permissions (permission_id);
CREATE INDEX IF NOT EXISTS client_role_users_user_id_idx ON client_role_users (user_id);
CREATE INDEX IF NOT EXISTS oauth_client_apps_owner_user_id_idx ON oauth_client_apps (owner_user_id);
CREATE INDEX IF NOT EXISTS client_roles_owner_user_id_idx ON client_roles (owner_user_id);
CREATE INDEX IF NOT EXISTS sessions_user_id_idx ON sessions (user_id);
CREATE INDEX IF NOT EXISTS sessions_oauth_client_app_id_idx ON sessions (oauth_client_app_id);
CREATE INDEX IF NOT EXISTS user_app_consents_oauth_client_app_id_idx ON user_app_consents (oauth_client_app_id);
CREATE INDEX IF NOT EXISTS invitations_accepted_user_id_idx ON invitations (accepted_user_id);
CREATE INDEX IF NOT EXISTS invitations_email_idx ON invitations (email);
