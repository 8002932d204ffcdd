"""The ClientApp a site runs: E local epochs on its data, evaluation on its own test split.

The same app runs under Flower's simulation engine and on a real SuperNode. The server sends the
whole run config in each message (ConfigRecord "config"), so a site needs no copy of it. The
tasks themselves live in `client.train_task` and `client.evaluate_task`.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.evaluate_task import evaluate_reply
from client.train_task import train_reply

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return train_reply(msg, context)


@app.evaluate()
def evaluate_site(msg: Message, context: Context) -> Message:
    return evaluate_reply(msg, context)
