-- A saga action's compensation URL, kept on the action's row: the compensation op gets a
-- row of its own (same payload, retry limit and timeout) only when it is first written,
-- which most sagas never need.
ALTER TABLE dtx_branch ADD COLUMN compensate TEXT;
-- Room on each page for the updated versions of its rows: an op's status change then
-- stays on its page (a HOT update) and writes no new primary-key entry.
ALTER TABLE dtx_branch SET (fillfactor = 80);
