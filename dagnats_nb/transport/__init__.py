"""The one door into nats-py: connecting, publishing with retry, fetching, raw ``$JS`` API
requests and the stores. Every use of a nats-py internal lives here, each with its reason."""
