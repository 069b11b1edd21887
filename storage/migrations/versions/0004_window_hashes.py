"""window_hashes: perceptual codes of eight 90 % windows per image, so crops match (dedup)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 18:55:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('window_hashes',
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('window', sa.SmallInteger(), nullable=False),
    sa.Column('phash', sa.BigInteger(), nullable=False),
    sa.Column('dhash', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('image_id', 'window')
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('window_hashes')
