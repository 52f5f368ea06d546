"""Sends a half message to Kafka through DTM's own Python client (`pip install dtmcli`).

Usage: python3 dtmcli_msg.py COORDINATOR_URL TOPIC QUERY_PREPARED_URL
Prints the gid; the Rust test reads the topic.
"""
import sys

from dtmcli import msg, utils

dtm = sys.argv[1].rstrip("/") + "/api/dtmsvr"
gid = utils.gen_gid(dtm)
m = msg.Msg(dtm, gid)
m.add({"amount": 30}, "kafka://" + sys.argv[2])
m.prepare(sys.argv[3])
m.submit()
print(gid)
