-- An example migration, embedded by the docs of pgprovider::embed_migrations!.
CREATE TABLE example_users (id bigint PRIMARY KEY, name text NOT NULL);
