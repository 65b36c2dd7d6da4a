"""``python -m services.dedup``"""

from services.dedup.app import SERVICE, create_app
from services.dedup.settings import DedupSettings
from shared.service import main

if __name__ == "__main__":
    main(SERVICE, DedupSettings.from_env, create_app)
