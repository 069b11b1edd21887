"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 18:32:41.936193

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _create_failures() -> None:
    op.create_table('failures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('error_class', sa.String(length=128), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('first_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('stage', 'subject', name='uq_failure')
    )
    with op.batch_alter_table('failures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_failures_stage'), ['stage'], unique=False)


def _create_images() -> None:
    op.create_table('images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('blob_key', sa.String(length=200), nullable=False),
    sa.Column('mime', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('source', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('phash', sa.BigInteger(), nullable=True),
    sa.Column('dhash', sa.BigInteger(), nullable=True),
    sa.Column('hash_impl', sa.String(length=64), nullable=True),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('dedup_role', sa.String(length=16), nullable=True),
    sa.Column('label', sa.String(length=16), nullable=True),
    sa.Column('watermark_score', sa.Float(), nullable=True),
    sa.Column('detector_version', sa.String(length=64), nullable=True),
    sa.Column('split', sa.String(length=8), nullable=True),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['images.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sha256')
    )
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_images_group_id'), ['group_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_images_label'), ['label'], unique=False)
        batch_op.create_index('ix_images_label_group', ['label', 'group_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_images_phash'), ['phash'], unique=False)
        batch_op.create_index(batch_op.f('ix_images_split'), ['split'], unique=False)
        batch_op.create_index(batch_op.f('ix_images_status'), ['status'], unique=False)


def _create_models() -> None:
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('checkpoint_key', sa.String(length=200), nullable=True),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('promoted', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version')
    )
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_models_kind'), ['kind'], unique=False)


def _create_pages() -> None:
    op.create_table('pages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('etag', sa.Text(), nullable=True),
    sa.Column('last_modified', sa.Text(), nullable=True),
    sa.Column('depth', sa.Integer(), nullable=False),
    sa.Column('opted_out', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('url')
    )
    with op.batch_alter_table('pages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pages_host'), ['host'], unique=False)


def _create_training_runs() -> None:
    op.create_table('training_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('history', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('run_dir', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_training_runs_model_version'), ['model_version'], unique=False)


def _create_cleanings() -> None:
    op.create_table('cleanings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('output_key', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('psnr_vs_input', sa.Float(), nullable=True),
    sa.Column('ssim_vs_input', sa.Float(), nullable=True),
    sa.Column('changed_fraction', sa.Float(), nullable=True),
    sa.Column('score_before', sa.Float(), nullable=True),
    sa.Column('score_after', sa.Float(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('runtime_s', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('image_id', 'model_version', name='uq_cleaning')
    )
    with op.batch_alter_table('cleanings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cleanings_image_id'), ['image_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cleanings_model_version'), ['model_version'], unique=False)


def _create_sightings() -> None:
    op.create_table('sightings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('image_id', sa.Integer(), nullable=False),
    sa.Column('page_id', sa.Integer(), nullable=True),
    sa.Column('image_url', sa.Text(), nullable=False),
    sa.Column('alt', sa.Text(), nullable=True),
    sa.Column('found_by', sa.String(length=32), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['page_id'], ['pages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('image_id', 'page_id', 'image_url', name='uq_sighting')
    )
    with op.batch_alter_table('sightings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sightings_image_id'), ['image_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sightings_page_id'), ['page_id'], unique=False)


def upgrade() -> None:
    """Upgrade schema: each table with its indexes, in dependency order."""
    _create_failures()
    _create_images()
    _create_models()
    _create_pages()
    _create_training_runs()
    _create_cleanings()
    _create_sightings()


def downgrade() -> None:
    """Downgrade schema."""
    # ### commands auto generated by Alembic - please adjust! ###
    with op.batch_alter_table('sightings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sightings_page_id'))
        batch_op.drop_index(batch_op.f('ix_sightings_image_id'))

    op.drop_table('sightings')
    with op.batch_alter_table('cleanings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cleanings_model_version'))
        batch_op.drop_index(batch_op.f('ix_cleanings_image_id'))

    op.drop_table('cleanings')
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_training_runs_model_version'))

    op.drop_table('training_runs')
    with op.batch_alter_table('pages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pages_host'))

    op.drop_table('pages')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_models_kind'))

    op.drop_table('models')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_images_status'))
        batch_op.drop_index(batch_op.f('ix_images_split'))
        batch_op.drop_index(batch_op.f('ix_images_phash'))
        batch_op.drop_index('ix_images_label_group')
        batch_op.drop_index(batch_op.f('ix_images_label'))
        batch_op.drop_index(batch_op.f('ix_images_group_id'))

    op.drop_table('images')
    with op.batch_alter_table('failures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_failures_stage'))

    op.drop_table('failures')
    # ### end Alembic commands ###
