"""OpenAI's Responses and Conversations APIs, with their state kept by the gateway.

The gateway stores responses, conversations and their items in its own database
(:mod:`.store`), so a conversation survives restarts and any replica continues it; each
turn gives the engine its whole context as a chat completion made through the gateway's
own /v1/chat/completions with the caller's key (:mod:`.turns`, :mod:`.model_calls`), and
every turn of a session goes to the same backend while it is healthy (:mod:`.routing`).

- :mod:`.api`: the routes (``router``), listed in the route table;
- :mod:`.checks`: request bodies (400 naming the field);
- :mod:`.items`: Responses items <-> chat messages, chat answers -> Response objects;
- :mod:`.stream`: streamed chat chunks -> the Responses API's events;
- :mod:`.cli`: ``hxp conversations purge`` (retention).
"""
