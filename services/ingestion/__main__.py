"""``python -m services.ingestion``"""

from services.ingestion.app import create_app
from services.ingestion.resources import SERVICE
from services.ingestion.settings import IngestionSettings
from shared.service import main

if __name__ == "__main__":
    main(SERVICE, IngestionSettings.from_env, create_app)
