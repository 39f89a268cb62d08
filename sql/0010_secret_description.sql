-- Issue 13, item 1: what a secret is for ("Moodle production", "staging"), set with `b3lb secret add|set
-- --description` or the admin API; shown by `secret list`. Text without control characters
-- (b3lb/validation.py DESCRIPTION), '' for none.
ALTER TABLE secret ADD COLUMN description varchar(200) NOT NULL DEFAULT '';
