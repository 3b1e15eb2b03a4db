DROP TABLE example_users;
