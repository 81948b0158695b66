# ruff: noqa: F821 -- `db` is bound by TestStack.mongo_eval
# Deterministic seed data for the MongoDB stand-in (run by TestStack.seed through
# TestStack.mongo_eval: `db` is the app database). Idempotent: fixed _ids, upserts.
NAMES = [
    "Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov",
    "Donald Knuth", "Margaret Hamilton", "Ken Thompson", "Dennis Ritchie", "Frances Allen",
    "John Backus", "Leslie Lamport", "Radia Perlman", "Tony Hoare", "Niklaus Wirth",
    "Shafi Goldwasser", "Robin Milner", "Adele Goldberg", "Butler Lampson", "Sophie Wilson",
]
for i, name in enumerate(NAMES, start=1):
    db.customers.replace_one(
        {"_id": i},
        {"_id": i, "name": name, "tier": ["gold", "silver", "bronze"][i % 3], "seed": True},
        upsert=True,
    )
db.seed_meta.replace_one({"_id": "seed"}, {"_id": "seed", "version": 1}, upsert=True)
result = db.customers.count_documents({"seed": True})
