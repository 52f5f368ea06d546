-- A saga action's compensation URL, kept on the action's row: the compensation op gets a
-- row of its own (same payload, retry limit and timeout) only when it is first written,
-- which most sagas never need.
ALTER TABLE dtx_branch ADD COLUMN compensate TEXT;
