"""pages.outlinks: the same-site links a page held when it was last parsed; an index on
sightings.image_url (a re-crawl asks "which of these image URLs do we know?" for every page)

A re-crawl that gets 304 Not Modified for a page has no body to parse; the stored links let it
carry on into the pages below (needed to resume a killed crawl without re-downloading pages).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 18:45:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('pages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('outlinks', sa.JSON(), nullable=True))
    with op.batch_alter_table('sightings', schema=None) as batch_op:
        # hash on PostgreSQL: a btree entry cannot hold a very long URL
        batch_op.create_index('ix_sightings_image_url', ['image_url'], unique=False, postgresql_using='hash')


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('sightings', schema=None) as batch_op:
        batch_op.drop_index('ix_sightings_image_url')
    with op.batch_alter_table('pages', schema=None) as batch_op:
        batch_op.drop_column('outlinks')
