"""The harness's sub-commands of ``dece-trainer``: ``bench``, ``demo`` and ``eval``. Each module builds its
parser from light imports only and imports model code when it runs."""
