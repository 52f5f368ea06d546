"""Drives dtx through DTM's own Python client (`pip install dtmcli`), unchanged.

Usage: python3 dtmcli_flow.py COORDINATOR_URL PARTICIPANT_URL
Prints one JSON line with the gids it used; the Rust test checks the outcomes.
"""
import json
import sys

from dtmcli import saga, tcc, utils

dtm = sys.argv[1].rstrip("/") + "/api/dtmsvr"
busi = sys.argv[2].rstrip("/")

# A saga that succeeds.
saga_ok = utils.gen_gid(dtm)
s = saga.Saga(dtm, saga_ok)
s.add({"amount": 30}, busi + "/out/action", busi + "/out/compensate")
s.add({"amount": 30}, busi + "/in/action", busi + "/in/compensate")
s.submit()

# A saga whose second step refuses (the participant answers 409).
saga_fail = utils.gen_gid(dtm)
s = saga.Saga(dtm, saga_fail)
s.add({"amount": 30}, busi + "/out/action", busi + "/out/compensate")
s.add({"amount": 30}, busi + "/refuse/action", busi + "/refuse/compensate")
s.submit()

# A TCC that confirms.
tcc_ok = utils.gen_gid(dtm)


def both(t):
    t.call_branch({"amount": 30}, busi + "/tout/try", busi + "/tout/confirm", busi + "/tout/cancel")
    t.call_branch({"amount": 30}, busi + "/tin/try", busi + "/tin/confirm", busi + "/tin/cancel")


assert tcc.tcc_global_transaction(dtm, tcc_ok, both) == tcc_ok

# A TCC whose second try refuses: dtmcli aborts, the coordinator cancels both.
tcc_fail = utils.gen_gid(dtm)


def refused(t):
    t.call_branch({"amount": 30}, busi + "/tout/try", busi + "/tout/confirm", busi + "/tout/cancel")
    t.call_branch({"amount": 30}, busi + "/refuse/try", busi + "/refuse/confirm", busi + "/refuse/cancel")


assert tcc.tcc_global_transaction(dtm, tcc_fail, refused) == ""

print(json.dumps({"saga_ok": saga_ok, "saga_fail": saga_fail, "tcc_ok": tcc_ok, "tcc_fail": tcc_fail}))
